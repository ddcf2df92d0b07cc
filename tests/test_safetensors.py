"""lantern.safetensors: round trips, the exact byte layout, checked errors for bad files, interop
with the safetensors package (where installed), and Llama checkpoints."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from lantern.models import llama
from lantern.models.train_llama import load_checkpoint, save_checkpoint
from lantern.safetensors import SafetensorsError, load_file, read_header, save_file


def sample_tensors():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(5, dtype=np.int64),
            "d": rng.standard_normal((2, 2, 2)), "h": np.array([1.5, -2.0], np.float16),
            "m": np.array([True, False]), "u": np.arange(6, dtype=np.uint8).reshape(2, 3),
            "i": np.array([-7, 9], np.int32), "s": np.float64(3.25), "e": np.zeros((0, 3), np.float32)}


def test_round_trip(tmp_path):
    t = sample_tensors()
    save_file(t, tmp_path / "a.safetensors", {"format": "pt", "note": "x"})
    back, meta = load_file(tmp_path / "a.safetensors", with_metadata=True)
    assert meta == {"format": "pt", "note": "x"} and set(back) == set(t)
    for k, v in t.items():
        assert back[k].dtype == np.asarray(v).dtype and back[k].shape == np.shape(v), k
        np.testing.assert_array_equal(back[k], v)
    back["w"][0, 0] = 1.0  # writable copies
    big_endian = np.arange(3, dtype=">f4")
    save_file({"x": big_endian}, tmp_path / "be.safetensors")
    np.testing.assert_array_equal(load_file(tmp_path / "be.safetensors")["x"], [0.0, 1.0, 2.0])


def test_byte_layout(tmp_path):
    path = tmp_path / "l.safetensors"
    save_file({"b": np.array([1, 2], np.int32), "a": np.array([0.5], np.float64)}, path, {"k": "v"})
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0 and raw[8:8 + n].decode().rstrip(" ") == raw[8:8 + n].decode().strip()
    header = json.loads(raw[8:8 + n])
    assert header == {"__metadata__": {"k": "v"},
                      "a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
                      "b": {"dtype": "I32", "shape": [2], "data_offsets": [8, 16]}}
    assert raw[8 + n:] == struct.pack("<d", 0.5) + struct.pack("<ii", 1, 2)  # little-endian, in name order
    assert read_header(path) == header


def test_bfloat16_loads_as_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)  # exactly representable in bfloat16
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    (tmp_path / "bf.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bf16)
    out = load_file(tmp_path / "bf.safetensors")["x"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values)


def raw_file(tmp_path, header, data=b"", length=None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("header,data,length,msg", [
    (b"", b"", None, "not valid JSON"),
    ({"x": F32x2}, b"\0" * 8, 10 ** 9, "declares a 1000000000-byte header"),
    (b"[1, 2]", b"", None, "not an object"),
    ({"x": {**F32x2, "dtype": "F8_E4M3"}}, b"\0" * 8, None, "unsupported dtype 'F8_E4M3'"),
    ({"x": {**F32x2, "shape": [-2]}}, b"\0" * 8, None, "bad shape"),
    ({"x": F32x2}, b"\0" * 4, None, r"data_offsets \[0, 8\] are not within the 4 data bytes"),
    ({"x": {**F32x2, "shape": [3]}}, b"\0" * 8, None, "8 bytes for shape \\[3\\] of F32 \\(needs 12\\)"),
    ({"x": F32x2, "y": F32x2}, b"\0" * 8, None, "overlapping tensors or a gap"),
    ({"x": F32x2}, b"\0" * 12, None, "4 bytes after the last tensor"),
    ({"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "expected {dtype, shape, data_offsets}"),
    ({"__metadata__": {"a": 1}}, b"", None, "must map strings to strings"),
])
def test_bad_files(tmp_path, header, data, length, msg):
    path = raw_file(tmp_path, header, data, length)
    with pytest.raises(SafetensorsError, match=msg) as info:
        load_file(path)
    assert "bad.safetensors" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_too_short_and_unwritable(tmp_path):
    (tmp_path / "s.safetensors").write_bytes(b"\1\2")
    with pytest.raises(SafetensorsError, match="too short"):
        load_file(tmp_path / "s.safetensors")
    with pytest.raises(SafetensorsError, match="dtype complex128"):
        save_file({"z": np.zeros(2, complex)}, tmp_path / "z.safetensors")
    with pytest.raises(SafetensorsError, match="metadata must map strings"):
        save_file({"a": np.zeros(1)}, tmp_path / "z.safetensors", {"n": 3})
    assert not list(tmp_path.glob("z.safetensors*"))  # nothing half-written


def test_interop_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    t = {k: v for k, v in sample_tensors().items() if k != "s"}
    save_file(t, tmp_path / "ours.safetensors", {"a": "b"})
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    for k in t:
        np.testing.assert_array_equal(theirs[k], t[k])
    st.save_file(t, str(tmp_path / "theirs.safetensors"), metadata={"c": "d"})
    back, meta = load_file(tmp_path / "theirs.safetensors", with_metadata=True)
    assert meta == {"c": "d"}
    for k in t:
        np.testing.assert_array_equal(back[k], t[k])


def test_llama_checkpoint_round_trip_and_hf_layout(tmp_path):
    cfg = llama.preset("tiny")
    params = llama.init_params(cfg, 1)
    save_checkpoint(str(tmp_path / "c.safetensors"), cfg, params, steps=3)
    cfg2, back = load_checkpoint(str(tmp_path / "c.safetensors"))
    assert cfg2 == cfg and set(back) == set(params)
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])
    assert json.loads(read_header(tmp_path / "c.safetensors")["__metadata__"]["lantern.steps"]) == 3
    # a file in HF layout without lantern's metadata (float16, with HF's rotary buffers) loads with a config
    hf = {k: v.astype(np.float16) for k, v in params.items()}
    hf["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    save_file(hf, tmp_path / "hf.safetensors", {"format": "pt"})
    with pytest.raises(Exception, match="pass config="):
        load_checkpoint(str(tmp_path / "hf.safetensors"))
    _, loaded = load_checkpoint(str(tmp_path / "hf.safetensors"), config=cfg)
    assert loaded["lm_head.weight"].dtype == np.float32
    np.testing.assert_allclose(loaded["lm_head.weight"], params["lm_head.weight"], atol=1e-3)
    del hf["lm_head.weight"]
    save_file(hf, tmp_path / "missing.safetensors")
    with pytest.raises(Exception, match=r"missing lm_head\.weight"):
        load_checkpoint(str(tmp_path / "missing.safetensors"), config=cfg)
