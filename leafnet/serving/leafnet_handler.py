"""TorchServe entry point of every leafnet archive (export packs this file as the handler and the
leafnet.serving package beside it as `leafnet_serving`). The logic lives in leafnet/serving/handler.py;
TorchServe wants exactly one class defined in the handler module itself, hence the subclass."""

try:  # in an archive: its own copy, never an installed leafnet's
    from leafnet_serving.handler import LeafnetServingHandler
except ModuleNotFoundError as missing:
    if missing.name != "leafnet_serving":  # a broken archive must fail loudly, not fall back
        raise
    from leafnet.serving.handler import LeafnetServingHandler  # from an installed leafnet or a checkout


class LeafnetHandler(LeafnetServingHandler):
    """leafnet.serving.handler.LeafnetServingHandler, under the name TorchServe loads."""
