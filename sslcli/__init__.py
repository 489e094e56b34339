"""sslcli: self-supervised visual pretraining on complex, multi-object images."""

__version__ = "0.1.0"
