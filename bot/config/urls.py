"""URLs as they may be shown: without the credentials some of them carry."""


def strip_credentials(url: str) -> str:
    """A URL as it may be shown: a user:password@ part and the query (a key?) cut out."""
    scheme, sep, rest = url.partition("://")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}"
