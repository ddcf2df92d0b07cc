"""Vanilla RNN language model (min-char-rnn), one training step per call: Lantern vs PyTorch.

Hidden 100, sequence 25, batch 1, and hidden 50, sequence 20, batch 20 (see charlm.py).

    python benchmarks/bench_rnn.py [--quick] [--threads N] [--layout row|column]
"""
import charlm

if __name__ == "__main__":
    charlm.main("rnn", [(100, 25, 1), (50, 20, 20)], __doc__.splitlines()[0])
