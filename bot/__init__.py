"""talkbot: an AI assistant for Nextcloud Talk."""

__version__ = "0.1.0"
# Who is calling, in Nextcloud's and the model server's logs (not aiohttp's own name).
USER_AGENT = f"talkbot/{__version__}"
