"""The rerun policy: fingerprints of files, models and parameters; keep, refuse or overwrite."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tissueseg import fingerprint, io


def test_key_and_file_stamps(tmp_path, monkeypatch):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"1")
    b.write_bytes(b"22")
    stamps = fingerprint.file_stamps([b, a])
    assert [s[0] for s in stamps] == [str(a), str(b)] and [s[1] for s in stamps] == [1, 2]
    assert fingerprint.key(stamps, {"x": 1, "y": 2}) == fingerprint.key(stamps, {"y": 2, "x": 1})
    before = fingerprint.key(fingerprint.file_stamp(a))
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert fingerprint.key(fingerprint.file_stamp(a)) != before
    monkeypatch.chdir(tmp_path)  # a relative path names the same file as its absolute path
    assert fingerprint.file_stamp("a.png") == fingerprint.file_stamp(a)


def test_weights_hash_follows_the_weights_not_the_object():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    first = fingerprint.weights_hash(net)
    assert fingerprint.weights_hash(net) == first
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    twin.load_state_dict(net.state_dict())
    assert fingerprint.weights_hash(twin) == first  # same values, another object
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1.0  # in place: the cache must notice
    assert fingerprint.weights_hash(net) != first
    net.load_state_dict(twin.state_dict())
    assert fingerprint.weights_hash(net) == first
    net[1].running_mean += 1.0  # buffers count too
    assert fingerprint.weights_hash(net) != first


def test_reuse_keeps_matching_outputs_and_refuses_others(tmp_path):
    out = tmp_path / "metrics.json"
    assert not fingerprint.reuse(out, "abc")  # nothing there: compute
    io.write_json(out, {"fingerprint": "abc"})
    assert fingerprint.reuse(out, "abc")
    with pytest.raises(fingerprint.StaleOutput, match=r"metrics.json: exists and was made from other .*--overwrite"):
        fingerprint.reuse(out, "xyz")
    assert not fingerprint.reuse(out, "xyz", overwrite=True)
    png = tmp_path / "a.png"
    io.write_png(png, np.zeros((2, 2), np.uint8), text={fingerprint.PNG_KEY: "abc"})
    assert fingerprint.recorded(png) == "abc" and fingerprint.reuse(png, "abc")
    io.write_png(png, np.zeros((2, 2), np.uint8))  # written by something that records nothing
    with pytest.raises(fingerprint.StaleOutput):
        fingerprint.reuse(png, "abc")
    out.write_text(json.dumps([1, 2]))
    assert fingerprint.recorded(out) is None


def test_unique_stems_names_both_files(tmp_path):
    fingerprint.unique_stems([tmp_path / "a.png", tmp_path / "b.png"])
    with pytest.raises(ValueError, match=r"x/a.png and .*y/a.tif: two inputs share the name 'a', which names their"):
        fingerprint.unique_stems([tmp_path / "x" / "a.png", tmp_path / "b.png", tmp_path / "y" / "a.tif"])
