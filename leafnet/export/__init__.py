"""Export a checkpoint to verified deployment artifacts: TorchScript, ONNX, quantized variants, .mar archives.

`export_checkpoint(ExportConfig(...))` is the whole stage; the modules hold one concern each:
`torchscript` and `onnx_export` write fp32 models, `quantize` the int8 ones, `runtime` runs any of
them on a batch, `parity` compares them with the eager model, `archive` packs TorchServe archives.
"""

from leafnet.callable_stage import callable_module

callable_module(__name__)  # leafnet.export(...) is the stage (leafnet/callable_stage.py says why)
