"""talkbot: an AI assistant for Nextcloud Talk."""

__version__ = "0.1.0"
