"""The pure diff of a swap: which services to rebuild, which keys came and went."""

from __future__ import annotations

from dataclasses import replace

from msa_gateway.model import Instance, ServiceOptions, ServiceSpec
from msa_gateway.registry.diff import KeyChanges, needs_rebuild, removed_services


def inst(port: int) -> Instance:
    return Instance(id=f"i{port}", host="127.0.0.1", port=port)


def test_a_shared_tuple_and_options_need_no_rebuild() -> None:
    instances, options = (inst(1), inst(2)), ServiceOptions()
    spec = ServiceSpec(name="a", instances=instances, options=options)
    assert not needs_rebuild(spec, instances, options)
    assert not needs_rebuild(spec, (inst(1), inst(2)), ServiceOptions()), "equal but not the same objects"


def test_new_services_other_instances_or_options_need_a_rebuild() -> None:
    options = ServiceOptions()
    spec = ServiceSpec(name="a", instances=(inst(1),), options=options)
    assert needs_rebuild(None, (inst(1),), options)
    assert needs_rebuild(spec, (inst(1), inst(2)), options)
    assert needs_rebuild(spec, (replace(inst(1), weight=3),), options)
    assert needs_rebuild(spec, (inst(1),), replace(options, balancer="random"))


def test_removed_services_keep_the_current_order() -> None:
    assert removed_services(["c", "a", "b", "d"], {"a": (), "d": ()}) == ["c", "b"]


def test_key_changes_name_added_and_removed_keys_in_order() -> None:
    changes = KeyChanges.between(["a/1", "a/2", "a/3"], ["a/2", "a/4", "a/5"])
    assert changes == KeyChanges(added=("a/4", "a/5"), removed=("a/1", "a/3"))
    assert KeyChanges.between((), ["x"]) == KeyChanges(added=("x",), removed=())
