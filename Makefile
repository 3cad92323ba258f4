# Shortcuts; the README's two commands are the contract.
.PHONY: install demo test bench

install:
	python -m pip install -e ".[test]"

demo: install
	python tools/train_net.py --config configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml

test:
	python -m pytest -q

bench:
	python benchmarks/benchmark_optimizer.py
	python benchmarks/benchmark_engine.py
	python benchmarks/benchmark_eval.py
