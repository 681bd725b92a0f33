"""The ``talkbot`` commands, one module each; bot/cli.py parses the command line."""
