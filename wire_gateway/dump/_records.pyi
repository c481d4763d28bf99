"""Types of the C record encoder (_records.c), for the type checker: the module itself is C."""
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from wire_gateway.wire.frame import Frame, Kind

class TapCore:
    """The hooks of a dump tap in C (tap.py's Tap is built on it)."""

    queue: list[tuple[Any, ...]]
    hops: Any          # tap._Hops
    dumper: Any        # writer.Dumper
    limit: int

    def frame(self, direction: str, frame: Frame, policy: str | None = None, /) -> None: ...
    def put(self, direction: str, raw: bytes, kind: Kind | None = None, method: str | None = None,
            msg_id: Any = None, policy: str | None = None, /) -> None: ...

def encode(batch: Sequence[tuple[Any, ...]], start: int, sec_text: bytes, second_at: float,
           overrides: list[bytes | None] | None, kinds: tuple[Kind, ...], methods: Mapping[Any, bytes],
           method_json: Callable[[Any], bytes], to_json: Callable[[Any], bytes],
           tail_of: Callable[[str | None, bool], bytes], word_test: bool, /) -> tuple[bytes, int, int, int]: ...
def suspects(raws: Iterable[bytes], /) -> list[int]: ...
def set_secret_rules(spellings: Sequence[bytes], separators: bytes, schemes: Sequence[bytes],
                     folds: Sequence[bytes], /) -> None: ...
