"""``python -m factory_cli``: the ``factory`` command, as the console script runs it."""

from factory_cli.app import app

if __name__ == "__main__":
    app()
