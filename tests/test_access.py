"""Roles come only from the exact signed actor id (W13, A02)."""

from __future__ import annotations

import pytest

from bot.access import Access, at_least, parse_role, stored_roles
from bot.config import AccessSettings
from bot.store import RoleOverride

CONFIG = AccessSettings(admins=("admin", "alice"), users=(), guest_role="none")


@pytest.mark.parametrize(
    ("actor_id", "expected"),
    [
        ("users/alice", "admin"),
        ("users/admin", "admin"),
        ("users/Admin", "user"),  # exact match only
        ("users/admin ", "user"),
        ("users/ admin", "user"),
        ("users/bob", "user"),
        ("admin", "none"),  # no kind
        ("users/", "none"),
        ("guests/admin", "none"),
        ("emails/admin", "none"),
        ("federated_users/admin@evil.example", "none"),
        ("federated_users/admin", "none"),
        ("bots/bot-admin", "none"),
        ("groups/admin", "none"),
        ("", "none"),
    ],
)
def test_w13_spoofed_actors_get_no_extra_role(actor_id: str, expected: str) -> None:
    assert Access(CONFIG).role_of(actor_id) == expected


def test_guest_role_applies_to_guests_emails_and_federated_users() -> None:
    access = Access(AccessSettings(guest_role="guest"))
    for actor_id in ("guests/abc", "emails/x@y", "federated_users/bob@remote.example"):
        assert access.role_of(actor_id) == "guest"


def test_users_list_restricts_the_user_role() -> None:
    access = Access(AccessSettings(admins=("root",), users=("bob",)))
    assert access.role_of("users/bob") == "user"
    assert access.role_of("users/carol") == "none"
    assert access.role_of("users/root") == "admin"


def test_overrides_promote_and_ban_but_never_demote_config_admins() -> None:
    access = Access(CONFIG, {"bob": "admin", "carol": "none", "alice": "none"})
    assert access.role_of("users/bob") == "admin"
    assert access.role_of("users/carol") == "none"
    assert access.role_of("users/alice") == "admin"
    access.set_override("bob", None)
    assert access.role_of("users/bob") == "user"


def test_role_helpers() -> None:
    assert at_least("admin", "user")
    assert not at_least("guest", "user")
    assert parse_role(" Admin ") == "admin"
    assert parse_role("root") is None


def test_roles_set_with_role_come_back_from_the_store_as_roles() -> None:
    """#12.1: the store's records become roles; a name this version does not know grants nothing."""
    stored = {
        "carol": RoleOverride("carol", "admin", "root", 1.0),
        "dave": RoleOverride("dave", "superuser", "root", 1.0),
    }
    access = Access(AccessSettings(users=("carol", "dave")), stored_roles(stored))
    assert access.role_of("users/carol") == "admin"
    assert access.role_of("users/dave") == "user"
