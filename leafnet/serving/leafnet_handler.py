"""TorchServe entry point of every leafnet archive (export packs this file as the handler and the
leafnet.serving package beside it as `leafnet_serving`). The logic lives in leafnet/serving/handler.py;
TorchServe wants exactly one class defined in the handler module itself, hence the subclass."""

try:  # in an archive
    from leafnet_serving.handler import LeafnetServingHandler
except ImportError:  # from an installed leafnet or a checkout
    from leafnet.serving.handler import LeafnetServingHandler


class LeafnetHandler(LeafnetServingHandler):
    """leafnet.serving.handler.LeafnetServingHandler, under the name TorchServe loads."""
