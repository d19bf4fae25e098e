"""fastconv's benchmark suite, a pytest suite installed as ``fastconv.benchmarks``.

``fastconv bench`` runs the suite (``pytest.main`` on this package's directory) and writes
a run folder: ``results.json`` (pytest-benchmark's JSON layout, with our machine information
under ``machine_info["fastconv"]``) plus ``report.md``, ``report.html`` and PNG plots.

The pytest process only orchestrates; every library runs in a worker process of its own
(``harness.py``, ``worker.py``), its peers interleaved over rounds. ``alone.py`` checks a run
against each library timed alone in a fresh process.

Every benchmark records in ``extra_info`` (the contract between the suite and the report):

- ``suite``: "conv2d", "max_pool2d", "avg_pool2d", "gemm", "train_step" or "models" (whole-network
  inference of an ONNX model: impl "auto" is fastconv.onnx, or "onnxruntime"; pass "forward"); the GPU suite
  (``--device cuda``) the same prefixed "cuda_", with GPU algorithm names ("direct", "im2col",
  "tiled"), "auto" and the peer "pytorch" (on the GPU), and the train-step record "cpu" (fastconv's
  CPU path on the same batch)
- ``case``: short id of the case, e.g. "vgg", "pool-vgg-3x3s2", "gemm-1024", "gemm-im2col-vgg",
  "lenet5" (train_step: the model's name in ``fc.models.MODELS``, with "-bN" when the batch is not 64; models:
  "<network>-b<batch>", e.g. "resnet50-b16")
- ``label``: the case as a reader should see it, e.g. "VGG 8x256x28x28 -> 256 3x3 pad 1"
- ``pass``: "forward" or "backward" ("forward" for gemm, "step" for train_step: zero_grad, forward,
  cross-entropy, backward and an Adam update, lr 1e-3, on a fixed batch)
- ``impl``: the implementation: a fastconv algorithm name ("direct", "im2col", "im2col_packed",
  "blas", "packed"), "auto", or a peer: "naive" (plain Python loops), "numpy", "pytorch",
  "onnxruntime" (forward passes only: one-node ONNX graphs) (train_step: "auto", the model with its
  layers' default algorithms, and "pytorch", its ``peers.torch_model`` twin)
- ``peer``: true for naive, numpy, pytorch and onnxruntime
- ``library``: the worker process that ran it: "fastconv" (its algorithms, "auto" and naive),
  "pytorch", "onnxruntime" or "numpy"
- ``device``: "cpu" or "cuda"
- ``flops``: floating-point operations of the whole case for this pass (conv forward
  2*N*K*OH*OW*C/g*R*S, backward twice that; gemm 2*M*N*K; pooling: one per window tap,
  N*C*OH*OW*kh*kw, for both passes; train_step: 3x the forward FLOPs of the model's convolutions
  and linear layers, 2 * outputs * weights per output; models: 2x the Conv and Gemm multiply-adds counted on
  the graph; these two also record ``images``)
- ``scale``: the factor from the measured time to the whole case (1.0 unless the case was run
  on a reduced slice: naive loops on large cases); report time = stats median * scale
- ``scaled_from``: None, or what was run instead, e.g. "batch 1, 16 of 256 channels"
- ``first_call_s``: seconds of the first call in its worker process (Numba compile and, for
  "auto", the autotuner's timing included when their caches are cold); ``compile_s``: first_call_s
  minus the median, for fastconv's compiled implementations, None for peers
- ``peak_memory_bytes``: peak resident memory above the level before one call (Linux
  VmHWM reset through /proc/self/clear_refs after malloc_trim; None where unsupported):
  outputs, workspaces and any allocator's scratch
- ``threads``: threads the implementation ran with (every library gets the same count; naive 1;
  None on the GPU)
- ``dtype``: "float32" (the suite's default) or "float64"
- ``is_peak``: true on the one benchmark whose GFLOP/s is the machine's practical peak:
  NumPy's float32 matmul at the largest square GEMM size run
- ``images`` (train_step only): the batch size, so that images/s = images / time
- ``alone_s``: with ``--fc-alone`` (fastconv auto, PyTorch, ONNX Runtime), the same call timed by itself
  in a fresh process of its library while every worker waits, three times spread over the group's
  rounds (the median of the three medians); else None

The record's ``stats`` hold pytest-benchmark's figures of the timed calls of the case run (min,
median, quartiles, ``rounds``: the number of calls, ``total``: their seconds), each round's median
(``round_medians``: how the machine drifted while the group was timed; ``harness.py`` says why that
matters on this project's VMs). The report derives: time, GFLOP/s, % of peak, speed-up over naive and over
NumPy, ratios to PyTorch and ONNX Runtime (the peer's time / ours: > 1 means fastconv is faster),
images/s of training steps, peak memory, compile time.
"""
