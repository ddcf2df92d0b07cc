import numpy as np

import lantern
from lantern.testing import check_staged


def test_issue_example(rng):
    def layer(x, w, b):
        return lantern.tanh(x @ w + b).sum(axis=1)

    x = rng.standard_normal((4, 3)).astype(np.float32)
    w = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    check_staged(layer, x, w, b, expected=np.tanh(x @ w + b).sum(axis=1))


def test_nested_structures_in_and_out(rng):
    @lantern.stage
    def step(params, state):
        h = lantern.tanh(state["h"] @ params["w"] + params["b"])
        return {"h": h}, (h.sum(), [h.max()])

    params = {"w": rng.standard_normal((3, 3)), "b": rng.standard_normal(3)}
    state = {"h": rng.standard_normal((2, 3))}
    out = check_staged(step, params, state)
    h = np.tanh(state["h"] @ params["w"] + params["b"])
    assert set(out[0]) == {"h"}
    np.testing.assert_allclose(out[0]["h"], h)
    np.testing.assert_allclose(out[1][0], h.sum())
    assert isinstance(out[1][1], list)
