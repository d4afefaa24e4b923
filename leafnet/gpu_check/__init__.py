"""`leafnet gpu-check`: the CUDA paths of training, DDP, evaluation, export and serving, exercised in a few
minutes on small synthetic data, with one JSON file of results (docs/gpu.md). `device=cpu` runs the same checks
on the CPU, so the code is exercised where no GPU is.

    config       the options (GpuCheckConfig) and the list of checks
    environment  the device refusal and the machine's description
    data         the generated and prepared synthetic leaves
    training     the trainer in bfloat16 and float16 (+ channels_last, torch.compile), and under torchrun
    stages       evaluate and export, as the pipeline runs them
    parity       TorchScript and onnxruntime on the device against eager and the CPU, and their latency
    serving      the archive's handler given a GPU, answering a batch
    report       the results file: a section per check, ok / failed / skipped with a reason and timings
    runner       the checks in order
"""
