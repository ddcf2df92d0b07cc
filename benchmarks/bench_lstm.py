"""Character LSTM language model, one training step per call: Lantern vs PyTorch.

Hidden 50 and 200, sequence 20, batch 1, one-hot characters in (see charlm.py).

    python benchmarks/bench_lstm.py [--quick] [--threads N] [--layout row|column]
"""
import charlm

if __name__ == "__main__":
    charlm.main("lstm", [(50, 20, 1), (200, 20, 1)], __doc__.splitlines()[0])
