"""Loading the YAML config: libyaml's parser, with Python objects built straight from its events.

PyYAML's C loader (``CSafeLoader``; in the PyYAML wheels and Debian's ``python3-yaml``) parses
in C but then builds a node tree and constructs objects from it in Python, which is most of
the time for a large file (5-7 s at 20,000 instances on a busy machine). ``load_yaml`` builds
dicts, lists and scalars directly from the parser's events instead, resolving each distinct
plain scalar once with the safe loader's own resolver and constructors, so the result is the
same; anything unusual (merge keys ``<<``, explicit collection tags, non-scalar keys, several
documents) goes through the standard safe loader. Without libyaml the pure-Python
``SafeLoader`` is used throughout.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import ScalarNode

try:
    from yaml import CSafeLoader as Loader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as Loader  # type: ignore[assignment]

C_ACCELERATED: bool = getattr(yaml, "__with_libyaml__", False)  # the C parser is in use
MAP_TAGS = (None, "!", "tag:yaml.org,2002:map")
SEQ_TAGS = (None, "!", "tag:yaml.org,2002:seq")
IMMUTABLE = (str, int, float, bool, type(None))


class _Unusual(Exception):
    """The document needs the standard loader."""


class _Builder:
    """Turn one document's events into Python objects, as ``yaml.safe_load`` would."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.anchors: dict[str, Any] = {}
        self.scalars: dict[tuple[str | None, str, Any], Any] = {}

    def document(self) -> Any:
        loader = self.loader
        self._expect(StreamStartEvent)
        if loader.check_event(StreamEndEvent):
            return None
        self._expect(DocumentStartEvent)
        value = self.value(loader.get_event())
        self._expect(DocumentEndEvent)
        if not loader.check_event(StreamEndEvent):
            raise _Unusual  # several documents: the standard loader names the error
        return value

    def _expect(self, kind: type[Event]) -> None:
        if not isinstance(self.loader.get_event(), kind):
            raise _Unusual

    def value(self, event: Event) -> Any:
        if isinstance(event, ScalarEvent):
            out = self.scalar(event)
        elif isinstance(event, MappingStartEvent):
            if event.tag not in MAP_TAGS:
                raise _Unusual
            out = {}
            self._anchor(event, out)
            self._fill_mapping(out)
            return out
        elif isinstance(event, SequenceStartEvent):
            if event.tag not in SEQ_TAGS:
                raise _Unusual
            out = []
            self._anchor(event, out)
            while not isinstance(item := self.loader.get_event(), SequenceEndEvent):
                out.append(self.value(item))
            return out
        elif isinstance(event, AliasEvent):
            if event.anchor not in self.anchors:
                raise _Unusual  # an undefined alias: the standard loader raises the error
            return self.anchors[event.anchor]
        else:
            raise _Unusual
        self._anchor(event, out)
        return out

    def _fill_mapping(self, out: dict[Any, Any]) -> None:
        while not isinstance(event := self.loader.get_event(), MappingEndEvent):
            key = self.value(event)
            if isinstance(key, (dict, list)):
                raise _Unusual  # an unhashable key: the standard loader raises the error
            out[key] = self.value(self.loader.get_event())

    def _anchor(self, event: Any, value: Any) -> None:
        if event.anchor is not None:
            self.anchors[event.anchor] = value

    def scalar(self, event: Any) -> Any:
        key = (event.tag, event.value, event.implicit)
        if key in self.scalars:
            return self.scalars[key]
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(ScalarNode, event.value, event.implicit)
        construct = self.loader.yaml_constructors.get(tag)
        if construct is None or tag == "tag:yaml.org,2002:merge":
            raise _Unusual
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        value = construct(self.loader, node)
        if isinstance(value, IMMUTABLE):
            self.scalars[key] = value
        return value


def load_yaml(text: str) -> Any:
    """Parse ``text`` like ``yaml.safe_load`` (no arbitrary objects); raise ``yaml.YAMLError`` on bad YAML."""
    loader = Loader(text)
    try:
        return _Builder(loader).document()
    except _Unusual:
        pass
    finally:
        loader.dispose()
    return yaml.load(text, Loader=Loader)  # a safe loader
