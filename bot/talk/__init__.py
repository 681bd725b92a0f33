"""The Nextcloud Talk boundary: webhook signatures, event parsing and the bot API client."""
