"""Property tests: random bad inputs to the config loader and the split-file parser give a clear
error of our own type, never a traceback from deep inside a library."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpeft.config import (
    ConfigError,
    load_method_configs,
    load_yaml,
    resolve_run,
    resolve_suites,
    validate_against_schema,
)
from vpeft.data.splits import DataError, read_split_file

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
METHOD_SCHEMA = ROOT / "workflow/schemas/method.schema.yaml"
CONFIG = load_yaml(ROOT / "config/config.yaml")
METHODS = load_method_configs(ROOT / "config/methods", METHOD_SCHEMA)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))


ALL_PATHS = [p for p in _paths(CONFIG) if p]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(ALL_PATHS), value=json_values, delete=st.booleans())
def test_mutated_config_is_valid_or_a_clear_config_error(path, value, delete):
    config = copy.deepcopy(CONFIG)
    node = config
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    try:
        validate_against_schema(config, SCHEMA)
    except ConfigError as err:
        assert "invalid value at" in str(err)
        return
    # whatever the schema accepts must also resolve cleanly (or fail with a ConfigError)
    try:
        suites = resolve_suites(config)
        for name, suite in suites.items():
            for task in list(suite.get("tasks", {}))[:1]:
                resolve_run(config, suites, METHODS, name, "lora", task, 0)
    except ConfigError:
        pass


@settings(max_examples=100, deadline=None)
@given(suite=st.text(max_size=12), method=st.text(max_size=12), task=st.text(max_size=12))
def test_unknown_names_are_config_errors(suite, method, task):
    suites = resolve_suites(CONFIG)
    try:
        resolve_run(CONFIG, suites, METHODS, suite, method, task, 0)
    except ConfigError as err:
        assert "valid" in str(err)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_method_yaml_text_is_valid_or_a_clear_config_error(text):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "lora.yaml").write_text(text)
        try:
            load_method_configs(folder, METHOD_SCHEMA)
        except ConfigError:
            pass


lines = st.lists(st.one_of(
    st.builds(lambda i, label: f"images/train800/{i:06d}.png {label}", st.integers(0, 999), st.integers(-3, 12)),
    st.text(max_size=30),
), max_size=8)


@settings(max_examples=200, deadline=None)
@given(content=lines.map("\n".join) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
       raw=st.binary(max_size=40), use_raw=st.booleans())
def test_split_file_parses_or_raises_a_data_error_naming_the_file(content, raw, use_raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train800.txt"
        if use_raw:
            path.write_bytes(raw)
        else:
            path.write_text(content, encoding="utf-8")
        try:
            items = read_split_file(path, num_classes=10)
        except DataError as err:
            assert str(path) in str(err)
            return
        assert items and all(isinstance(p, str) and 0 <= label < 10 for p, label in items)
