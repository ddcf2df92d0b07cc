"""The README's main job: the char-RNN demo trains (its loss goes down) and samples."""
import numpy as np

from lantern import demo


def test_demo_training_step_lowers_the_loss():
    vocab = 11
    params = demo.init_params(vocab, 16)
    memory = {k: np.zeros_like(v) for k, v in params.items()}
    h = np.zeros(16, np.float32)
    data = np.tile(np.arange(vocab, dtype=np.int64), 8)  # a perfectly predictable sequence
    losses = []
    for s in range(60):
        params, memory, loss, h = demo.train_step(params, memory, data[:25], data[1:26], h)
        losses.append(float(loss))
    assert losses[0] > 2.3 and losses[-1] < 0.5 * losses[0]


def test_demo_main_runs(capsys):
    demo.main(steps=3)
    out = capsys.readouterr().out
    assert "first step" in out and "sample:" in out and "generated C" in out
