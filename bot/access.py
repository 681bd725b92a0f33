"""Roles: who may do what, decided only from the signed actor id and the admins' settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import get_args

import structlog

from bot.config import AccessSettings, Role
from bot.i18n import _
from bot.store import RoleOverride

log = structlog.get_logger(__name__)

ROLES: tuple[Role, ...] = get_args(Role)
_RANK = {role: rank for rank, role in enumerate(ROLES)}
GUEST_KINDS = frozenset({"guests", "emails", "federated_users"})


def at_least(role: Role, minimum: Role) -> bool:
    return _RANK[role] >= _RANK[minimum]


def parse_role(text: str) -> Role | None:
    lowered = text.strip().lower()
    return next((role for role in ROLES if role == lowered), None)


def stored_roles(overrides: Mapping[str, RoleOverride]) -> dict[str, Role]:
    """The roles admins set with `!role`, as the store keeps them; unknown names are skipped.

    A role name this version does not know (a downgrade, a hand-edited store) grants
    nothing: that person falls back to the config's role.
    """
    roles: dict[str, Role] = {}
    for uid, override in overrides.items():
        role = parse_role(override.role)
        if role is None:
            log.warning("access.unknown_stored_role", uid=uid, role=override.role)
        else:
            roles[uid] = role
    return roles


# A person's Nextcloud groups as last known (bot.directory); None when not known.
GroupsOf = Callable[[str], tuple[str, ...] | None]


def no_groups(_uid: str) -> tuple[str, ...] | None:
    return None


class Access:
    """Maps an actor id to a role: config admins, then admin-set overrides, then the
    highest of the config lists and the person's Nextcloud groups (``[access.groups]``).

    Display names, message text and model output never reach this class (W13, A02).
    Groups come from a cache the router fills before an event is handled (bot.directory);
    when they are not known, only the config decides, which never gives more (N04).
    """

    def __init__(
        self,
        settings: AccessSettings,
        overrides: dict[str, Role] | None = None,
        *,
        groups_of: GroupsOf = no_groups,
    ) -> None:
        self._settings = settings
        self._overrides: dict[str, Role] = dict(overrides or {})
        self._groups_of = groups_of

    @property
    def settings(self) -> AccessSettings:
        return self._settings

    def reconfigure(self, settings: AccessSettings) -> None:
        self._settings = settings

    def set_override(self, uid: str, role: Role | None) -> None:
        if role is None:
            self._overrides.pop(uid, None)
        else:
            self._overrides[uid] = role

    def replace_overrides(self, overrides: dict[str, Role]) -> None:
        """All of the ``!role`` overrides at once, as stored (another replica set one)."""
        self._overrides = dict(overrides)

    def is_config_admin(self, uid: str) -> bool:
        return uid in self._settings.admins

    def role_of(self, actor_id: str) -> Role:
        kind, sep, uid = actor_id.partition("/")
        if not sep or not uid:
            return "none"
        if kind in GUEST_KINDS:
            return self._settings.guest_role
        if kind != "users":
            return "none"
        return self.user_role(uid)

    def user_role(self, uid: str) -> Role:
        return self.explain(uid)[0]

    def explain(self, uid: str) -> tuple[Role, str]:
        """``uid``'s role and where it comes from, for ``!roles``."""
        settings = self._settings
        if uid in settings.admins:
            return "admin", _("config admins")
        if uid in self._overrides:
            return self._overrides[uid], _("set in chat")
        if uid in settings.users:
            base: tuple[Role, str] = ("user", _("config users"))
        elif settings.users or settings.groups.user:
            base = ("none", _("in no list or mapped group"))
        else:
            base = ("user", _("everyone with an account"))
        groups = self._groups_of(uid)
        if groups is None or not settings.groups.mapped():
            return base
        from_groups = settings.groups.role_of(groups)
        if from_groups is None or _RANK[from_groups] <= _RANK[base[0]]:
            return base
        mapped = [g for g in getattr(settings.groups, from_groups) if g in groups]
        return from_groups, _("group {names}").format(names=", ".join(mapped))
