"""portaudit's command implementations; each module exposes plain functions registered in cli.py."""
