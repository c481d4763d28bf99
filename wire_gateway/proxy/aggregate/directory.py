"""The aggregate's directory: which member a name, a URI or a list cursor belongs to.

Tools and prompts are shown as `<server><separator><name>`, so a name routes by itself even
before anything was listed; resources keep their URIs, so a URI routes to the member that listed
it (or a template matching it), and one nobody listed yet makes the directory read the members'
resource lists (bounded) to find its owner. List pages run through the members in config order,
one member's pages after another's, under cursors that say where the next page starts; a member
that is down or fails to list is skipped for that page (the aggregate degrades, it does not fail).

The naming, cursor and template rules are sans-IO in `wire.namespacing`; this module keeps what
was learnt from the lists and asks the members for pages.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from wire_gateway.proxy.aggregate.messages import dict_at, result_msg
from wire_gateway.wire import errors, namespacing as ns
from wire_gateway.wire.frame import Frame

if TYPE_CHECKING:
    from wire_gateway.proxy.aggregate.endpoint import Aggregate
    from wire_gateway.proxy.aggregate.members import Member

log = logging.getLogger("wire_gateway.aggregate")

LIST_TIMEOUT = 10.0             # a member that does not list within this is skipped for that page
MAX_LEARN_PAGES = 20            # pages per member read when looking for an unlisted URI

# Which list a method pages through, its items key, and how items are named.
LISTS = {
    "tools/list": ("tools", "name"),
    "prompts/list": ("prompts", "name"),
    "resources/list": ("resources", "uri"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate"),
}


class RouteError(Exception):
    """A request the aggregate cannot route: answered with this JSON-RPC error."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class Directory:
    """What the aggregate learnt from its members' lists, and the routing that reads it."""

    def __init__(self, agg: Aggregate) -> None:
        self.agg = agg
        self.sep = agg.sep
        self.members = agg.members        # the aggregate's own dict and order: routing reads them directly
        self.order = agg.order
        self.names: dict[tuple[str, str], tuple[Member, str]] = {}   # (list key, public name) -> origin
        self.uris: dict[str, Member] = {}
        self.templates: list[tuple[Any, str, Member]] = []            # (regex, template, member)

    # ---- names ------------------------------------------------------------------------------------

    def route_tool(self, public: str) -> tuple[Member, str] | None:
        """Where a tools/call goes, as `by_name` says (the one server, by the tool's own name, for the
        era bridge's aggregate); None where it would refuse."""
        if self.agg.single:
            member = self.members[self.agg.name]
            return (member, public) if member.ok else None
        try:
            return self.by_name("tools", public)
        except RouteError:
            return None

    def by_name(self, key: str, public: Any) -> tuple[Member, str]:
        """The member a tool or prompt name belongs to, and the name it has there."""
        what = "tool" if key == "tools" else "prompt"
        if not isinstance(public, str):
            raise RouteError(errors.INVALID_PARAMS, f"Invalid params: {what} name must be a string")
        known = self.names.get((key, public))
        if known is not None:
            return known
        parts = ns.split_name(public, self.sep)
        member = self.members.get(parts[0]) if parts is not None else None
        if parts is None or member is None or ns.is_shortened(parts[0], parts[1], self.sep):
            raise RouteError(errors.INVALID_PARAMS,
                             f"unknown {what} {public!r}: aggregate names are <server>{self.sep}<{what}> with "
                             f"server one of {', '.join(self.order)}; list them with {key}/list",
                             {"name": public})
        if not member.ok:
            raise RouteError(errors.UPSTREAM_UNAVAILABLE, f"server '{member.name}' is unavailable: {member.problem}",
                             {"server": member.name, "source": errors.SOURCE})
        return member, parts[1]

    def forget_names(self, member: Member, key: str) -> None:
        """The member's list changed: its names are learnt again from its next page."""
        for name in [k for k, (m, _) in self.names.items() if k[0] == key and m is member]:
            del self.names[name]

    # ---- URIs -------------------------------------------------------------------------------------

    async def by_uri(self, uri: Any) -> Member:
        """The member a resource URI belongs to."""
        if not isinstance(uri, str):
            raise RouteError(errors.INVALID_PARAMS, "Invalid params: uri must be a string")
        member = self._uri_owner(uri)
        if member is None:
            await self._learn_resources()
            member = self._uri_owner(uri)
        if member is None:
            raise RouteError(-32002, f"Resource not found: no server of the aggregate lists {uri!r} "
                             "or a template matching it", {"uri": uri})
        if not member.ok:
            raise RouteError(errors.UPSTREAM_UNAVAILABLE, f"server '{member.name}' is unavailable: {member.problem}",
                             {"server": member.name})
        return member

    def _uri_owner(self, uri: str) -> Member | None:
        member = self.uris.get(uri)
        if member is not None:
            return member
        for regex, _template, owner in self.templates:
            if regex.match(uri):
                return owner
        return None

    async def _learn_resources(self) -> None:
        """A URI nobody listed yet: read every member's resource lists (bounded) to find its owner."""
        for member in self.agg.ready():
            if not isinstance(member.capabilities.get("resources"), dict):
                continue
            for method in ("resources/list", "resources/templates/list"):
                cursor = None
                for _ in range(MAX_LEARN_PAGES):
                    params: dict[str, Any] = {"cursor": cursor} if cursor else {}
                    answer = await member.call(method, self.agg.params_for(member, params), LIST_TIMEOUT)
                    result = answer.get("result")
                    if not isinstance(result, dict):
                        break
                    items_key, _ = LISTS[method]
                    items = result.get(items_key)
                    self._learn(member, method, items if isinstance(items, list) else [])
                    cursor = result.get("nextCursor")
                    if not isinstance(cursor, str) or not cursor:
                        break

    async def completion_target(self, params: dict[str, Any]) -> tuple[Member, dict[str, Any]]:
        """Where a completion/complete goes (by its prompt's name or its resource's URI), with the
        params that member must get."""
        ref = params.get("ref")
        if not isinstance(ref, dict):
            raise RouteError(errors.INVALID_PARAMS, "Invalid params: completion/complete needs a ref object")
        if ref.get("type") == "ref/prompt":
            member, original = self.by_name("prompts", ref.get("name"))
            return member, {**params, "ref": {**ref, "name": original}}
        if ref.get("type") == "ref/resource":
            uri = ref.get("uri")
            owner = next((m for _, t, m in self.templates if t == uri), None) if isinstance(uri, str) else None
            return owner or await self.by_uri(uri), params
        raise RouteError(errors.INVALID_PARAMS, f"Invalid params: unknown completion ref type {ref.get('type')!r}")

    # ---- lists and cursors -------------------------------------------------------------------------

    async def page(self, frame: Frame, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One page of a merged list, with the cursor of the next one."""
        items_key, _ = LISTS[method]
        cursor = params.get("cursor")
        if cursor is None:
            server, member_cursor, offset = self.order[0], None, 0
        else:
            parsed = ns.read_cursor(cursor)
            if parsed is None or parsed[0] not in self.members:
                raise RouteError(errors.INVALID_PARAMS, "Invalid params: unknown or expired cursor; list again "
                                 "without a cursor", {"cursor": cursor if isinstance(cursor, str) else None})
            server, member_cursor, offset = parsed
        while True:
            member = self.members[server]
            page = await self._member_page(member, method, params, member_cursor)
            if page is not None:
                items, member_next = page
                shown, next_cursor = ns.page_plan(self.order, server, items, offset, member_next, member_cursor,
                                                  self.agg.settings.page_size)
                result: dict[str, Any] = {items_key: shown}
                if next_cursor is not None:
                    result["nextCursor"] = next_cursor
                return result_msg(frame.id, result)
            following = ns.next_server(self.order, server)    # skip a failing member: degrade, not fail
            if following is None:
                return result_msg(frame.id, {items_key: []})
            server, member_cursor, offset = following, None, 0

    async def _member_page(self, member: Member, method: str, params: dict[str, Any],
                           cursor: str | None) -> tuple[list[Any], str | None] | None:
        """One page of one member's list, renamed; None if the member is down or failed to list."""
        items_key, _ = LISTS[method]
        cap = {"tools/list": "tools", "prompts/list": "prompts"}.get(method, "resources")
        if not member.ok:
            return None
        if not isinstance(member.capabilities.get(cap), dict):
            return [], None
        asked = {k: v for k, v in params.items() if k != "cursor"}
        if cursor is not None:
            asked["cursor"] = cursor
        answer = await member.call(method, self.agg.params_for(member, asked), min(member.timeout, LIST_TIMEOUT))
        result = dict_at(answer, "result")
        items = result.get(items_key)
        if not isinstance(items, list):
            err = dict_at(answer, "error")
            log.warning("aggregate: member %s failed %s (%s); its entries are left out of this page",
                        member.name, method, err.get("message", "no list in the answer"))
            return None
        nxt = result.get("nextCursor")
        return self._learn(member, method, items), nxt if isinstance(nxt, str) and nxt else None

    def _learn(self, member: Member, method: str, items: list[Any]) -> list[Any]:
        """Remember where each listed name or URI lives; return the items as the client sees them."""
        items_key, field = LISTS[method]
        out = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get(field), str):
                continue
            if method in ("tools/list", "prompts/list"):
                public = ns.join_name(member.name, item[field], self.sep)
                self.names[(items_key, public)] = (member, item[field])
                item = {**item, field: public}
            elif method == "resources/list":
                owner = self.uris.setdefault(item[field], member)
                if owner is not member:
                    log.warning("aggregate: %s and %s both list resource %r; reads go to %s",
                                owner.name, member.name, item[field], owner.name)
            elif all(t != item[field] or m is not member for _, t, m in self.templates):
                self.templates.append((ns.template_regex(item[field]), item[field], member))
            out.append(item)
        return out
