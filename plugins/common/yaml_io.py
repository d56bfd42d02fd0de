"""YAML reading that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

from __future__ import annotations

import yaml
from yaml.constructor import ConstructorError


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse duplicate keys (a ``yaml.YAMLError`` naming key and line)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first != key_node.start_mark.line + 1:
                raise ConstructorError(None, None, f"duplicate key {key!r} (lines {first} and "
                                       f"{key_node.start_mark.line + 1}); each key may appear once",
                                       key_node.start_mark)
        return super().construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, UniqueKeyLoader.construct_mapping)


def safe_load_unique(stream):
    """``yaml.safe_load`` that raises ``yaml.YAMLError`` on a duplicate key."""
    return yaml.load(stream, Loader=UniqueKeyLoader)
