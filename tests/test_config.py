"""Configuration: preset merging, size presets, typed dotted overrides, helpful errors, immutability."""

from __future__ import annotations

import pytest
import yaml

from lwm import config
from lwm.config import Config, ConfigError

# The size table of docs/ALGORITHM.md: preset -> (deter, hidden = units, classes = CNN depth).
# All have stoch 32, blocks 8.
SIZES = {
    "size1m": (512, 64, 4),
    "size12m": (2048, 256, 16),
    "size25m": (3072, 384, 24),
    "size50m": (4096, 512, 32),
    "size100m": (6144, 768, 48),
    "size200m": (8192, 1024, 64),
    "size400m": (12288, 1536, 96),
}


def test_defaults_load():
    c = config.load()
    assert isinstance(c, Config)
    assert c.agent.rssm.deter == 512 and c.agent.imag.lam == 0.95
    assert c.env.options == {}
    assert c == config.load([], {})


def test_presets_merge_in_order_later_wins():
    a = config.load(["size1m", "debug"])
    b = config.load(["debug", "size1m"])
    assert a.agent.rssm.deter == 64 and a.agent.units == 32  # debug last
    assert b.agent.rssm.deter == 512 and b.agent.units == 64  # size1m last
    # Keys only one preset sets survive whatever the order; unrelated keys keep their defaults.
    assert a.batch_size == b.batch_size == 4
    assert a.agent.rssm.unimix == b.agent.rssm.unimix == 0.01
    # Nested mappings merge key by key rather than replacing the whole mapping.
    assert b.agent.enc.token_embed == 16 and b.agent.enc.cnn_depth == 4
    # Overrides apply after every preset.
    c = config.load(["debug", "size1m"], {"agent.rssm.deter": 128})
    assert c.agent.rssm.deter == 128


def test_every_size_preset_is_listed():
    names = config.preset_names()
    assert set(SIZES) <= set(names)
    assert "debug" in names and "defaults" not in names
    assert {n for n in names if n.startswith("size")} == set(SIZES)


@pytest.mark.parametrize("preset", sorted(SIZES))
def test_size_preset_matches_algorithm_table(preset):
    deter, hidden, classes = SIZES[preset]
    c = config.load([preset])
    r = c.agent.rssm
    assert (r.deter, r.hidden, r.classes, r.stoch, r.blocks) == (deter, hidden, classes, 32, 8)
    assert c.agent.units == hidden
    assert c.agent.enc.cnn_depth == classes
    assert r.deter % r.blocks == 0


def test_debug_preset_is_tiny():
    r = config.load(["debug"]).agent.rssm
    c = config.load(["debug"])
    assert r.deter <= 64 and r.stoch == 4 and r.classes == 4 and c.agent.units <= 32
    assert (c.batch_size, c.batch_length) == (4, 16)


def test_cli_overrides_are_typed():
    c, extra = config.parse_args(["--configs", "debug", "--agent.rssm.deter", "1024",
                                  "--agent.opt.lr", "1e-3", "--env.mask_tokens", "true",
                                  "--logdir", "/tmp/x"])
    assert c.agent.rssm.deter == 1024 and type(c.agent.rssm.deter) is int
    assert c.agent.opt.lr == 1e-3 and type(c.agent.opt.lr) is float
    assert c.env.mask_tokens is True
    assert extra == {"logdir": "/tmp/x"}
    assert c.batch_size == 4  # the preset applied too


@pytest.mark.parametrize("text,want", [("true", True), ("false", False), ("True", True), ("yes", True),
                                       ("no", False), ("on", True), ("off", False), ("1", True),
                                       ("0", False)])
def test_bool_parsing(text, want):
    c, _ = config.parse_args(["--env.mask_tokens", text])
    assert c.env.mask_tokens is want


def test_cli_forms():
    c, _ = config.parse_args(["--agent.rssm.deter=256", "--configs", "debug,size1m", "--seed", "7"])
    # --configs applies before overrides whatever the flag order.
    assert c.agent.rssm.deter == 256 and c.agent.units == 64 and c.seed == 7
    c, _ = config.parse_args(["--configs", "size1m", "debug"])
    assert c.agent.rssm.deter == 64
    # An int key accepts integral floats written as text; a float key accepts ints.
    c, _ = config.parse_args(["--batch_size", "2e1", "--run.train_ratio", "64"])
    assert c.batch_size == 20 and type(c.batch_size) is int
    assert c.run.train_ratio == 64.0 and type(c.run.train_ratio) is float
    with pytest.raises(ConfigError, match="needs a value"):
        config.parse_args(["--seed"])
    with pytest.raises(ConfigError, match="Unexpected argument"):
        config.parse_args(["debug"])


def test_env_shorthand_sets_env_name():
    c, _ = config.parse_args(["--env", "somewhere"])
    assert c.env.name == "somewhere"
    c, _ = config.parse_args(["--configs", "tokenchoice", "--env", "other"])
    assert c.env.name == "other" and c.env.num_envs == 8


@pytest.mark.parametrize("flag,suggestion", [("agent.rssm.detr", "agent.rssm.deter"),
                                             ("agent.rsm.deter", "agent.rssm.deter"),
                                             ("agent.opt.lrr", "agent.opt.lr"),
                                             ("batch_sise", "batch_size")])
def test_unknown_key_names_it_and_suggests(flag, suggestion):
    with pytest.raises(ConfigError) as info:
        config.parse_args([f"--{flag}", "3"])
    msg = str(info.value)
    assert repr(flag) in msg
    assert f"Did you mean {suggestion!r}" in msg


def test_unknown_key_in_preset_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"agent": {"rssm": {"stoch_size": 8}}}))
    with pytest.raises(ConfigError, match=r"agent\.rssm\.stoch_size.*agent\.rssm\.stoch"):
        config.load([str(path)])


@pytest.mark.parametrize("overrides,key", [
    ({"agent.rssm.deter": "1.5"}, "agent.rssm.deter"),      # int key, non-integral text
    ({"agent.rssm.deter": "many"}, "agent.rssm.deter"),
    ({"agent.rssm.deter": 1.5}, "agent.rssm.deter"),        # int key, float value
    ({"agent.rssm.deter": True}, "agent.rssm.deter"),       # bool never stands in for an int
    ({"env.mask_tokens": "maybe"}, "env.mask_tokens"),      # bool key
    ({"env.mask_tokens": 1}, "env.mask_tokens"),
    ({"agent.opt.lr": "fast"}, "agent.opt.lr"),             # float key
    ({"jax.compute_dtype": 16}, "jax.compute_dtype"),       # str key given an int
    ({"agent.rssm": 3}, "agent.rssm"),                      # mapping key given a scalar
])
def test_wrong_type_is_an_error(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load(["debug"], overrides)


def test_wrong_type_in_preset_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("jax:\n  compute_dtype: 16\n")
    with pytest.raises(ConfigError, match=r"jax\.compute_dtype.*str") as info:
        config.load(["debug", str(path)])
    assert "bad.yaml" in str(info.value)  # names where the value came from


def test_preset_includes_merge_first_then_own_keys(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("presets: [debug]\nbatch_size: 7\nagent: {units: 48}\n")
    top = tmp_path / "top.yaml"
    top.write_text(f"presets: [{base}]\nbatch_size: 9\n")
    c = config.load([str(top)])
    assert c.batch_size == 9  # the file's own keys win over what it includes
    assert c.agent.units == 48  # the included preset's keys survive
    assert c.agent.rssm.deter == config.load(["debug"]).agent.rssm.deter  # includes are recursive
    assert c == config.load(["debug", str(base), str(top)])  # same as listing them in order
    # The hinted-gridworld presets share grid_cpu and differ in the world (and dynamics in its entropy bonus).
    task, dynamics = config.load(["grid_task"]), config.load(["grid_dynamics"])
    assert task.env.name == "grid_task_s" and dynamics.env.name == "grid_dynamics_s"
    assert task.update({"env.name": "grid_dynamics_s", "agent.actor.entropy": 1e-2}) == dynamics
    assert dynamics == config.load(["grid_cpu", "grid_dynamics"])


def test_preset_including_itself_is_an_error(tmp_path):
    loop_a, loop_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    loop_a.write_text(f"presets: [{loop_b}]\n")
    loop_b.write_text(f"presets: [{loop_a}]\n")
    with pytest.raises(ConfigError, match="includes itself"):
        config.load([str(loop_a)])


@pytest.mark.parametrize("text, match", [
    ("presets: {debug: 1}\n", "must be a list of preset names"),
    ("presets: [grid_cpux]\n", "Unknown preset 'grid_cpux'.*grid_cpu"),
    ("3\n", "a preset is a mapping"),
])
def test_bad_preset_include_is_an_error(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        config.load([str(path)])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as info:
        config.load(["size13m"])
    msg = str(info.value)
    assert "'size13m'" in msg
    for name in ["debug", "size1m", "size400m", "tokenchoice"]:
        assert name in msg
    assert "Did you mean" in msg
    with pytest.raises(ConfigError, match="Unknown preset"):
        config.parse_args(["--configs", "nope"])


def test_env_options_are_free_form():
    c, _ = config.parse_args(["--env.options.num_choices", "3", "--env.options.ratio", "0.25",
                              "--env.options.image", "true", "--env.options.word", "red",
                              "--env.options.big", "1e3"])
    assert c.env.options == {"num_choices": 3, "ratio": 0.25, "image": True, "word": "red", "big": 1000.0}
    assert type(c.env.options.num_choices) is int
    # On top of a preset's options: existing ones are replaced, new ones added, the rest kept.
    c, _ = config.parse_args(["--configs", "tokenchoice", "--env.options.delay", "5",
                              "--env.options.seed", "9"])
    assert c.env.options == {"num_choices": 4, "delay": 5, "seed": 9}
    # Nested (preset-style) values too, when nothing set the options before.
    c = config.load([], None).update({"env": {"options": {"anything": [1, 2], "x": 1}}})
    assert c.env.options.to_dict() == {"anything": [1, 2], "x": 1}


def test_env_options_free_form_after_preset(tmp_path):
    path = tmp_path / "seeded.yaml"
    path.write_text("env:\n  options: {seed: 3}\n")
    c = config.load(["tokenchoice", str(path)])
    assert c.env.options == {"num_choices": 4, "delay": 2, "seed": 3}


def test_config_is_immutable():
    c = config.load(["debug"])
    with pytest.raises(AttributeError, match="immutable"):
        c.seed = 3
    with pytest.raises(AttributeError):
        c.agent.rssm.deter = 3
    with pytest.raises(TypeError):
        c["seed"] = 3  # type: ignore[index]
    d = c.to_dict()
    d["agent"]["rssm"]["deter"] = 1
    assert c.agent.rssm.deter == 64  # to_dict returns a copy
    e = c.update({"agent.rssm.deter": 128})
    assert e.agent.rssm.deter == 128 and c.agent.rssm.deter == 64
    assert e != c and hash(c) == hash(config.load(["debug"]))
    with pytest.raises(AttributeError, match="Did you mean"):
        _ = c.agent.rssm.detr


def test_flat_view():
    flat = config.load(["debug"]).flat()
    assert flat["agent.rssm.deter"] == 64 and flat["env.options"] == {}
    assert all(not isinstance(v, dict) or not v for v in flat.values())


@pytest.mark.parametrize("presets,overrides", [
    (["debug"], {}),
    (["tokenchoice", "size12m"], {"env.options.seed": 4, "agent.opt.lr": 1e-3, "env.mask_tokens": True}),
])
def test_save_load_round_trip(tmp_path, presets, overrides):
    c = config.load(presets, overrides)
    path = tmp_path / "config.yaml"
    c.save(path)
    assert yaml.safe_load(path.read_text()) == c.to_dict()
    again = config.load([str(path)])
    assert again == c
    assert again.flat() == c.flat()
    assert type(again.agent.opt.lr) is float
