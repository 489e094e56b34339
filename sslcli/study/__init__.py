"""Studies: arms x seeds of pretraining runs, evaluations on every checkpoint, expected orderings, a report.

spec.py reads and validates a study file, runner.py executes it through the real CLI (content-addressed, resumable),
metrics.py flattens command results into metric names, expect.py judges orderings, report.py writes the report.
This package never imports sslcli.cli: the CLI passes in its logger and option translation.
"""
