"""Repository tools that are not part of the installed package (the import-linter contract type of the walls)."""
