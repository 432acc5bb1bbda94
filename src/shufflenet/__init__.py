"""ShuffleNet V1, V2 and V2+ for PyTorch.

>>> import shufflenet
>>> model = shufflenet.get_model("shufflenet_v2_x1_0", num_classes=10)
>>> shufflenet.list_models("shufflenet_v1_g3*")[:2]
['shufflenet_v1_g3_x0_25', 'shufflenet_v1_g3_x0_5']
"""

from .complexity import Complexity, complexity
from .errors import UserError
from .inference import inference_model
from .models import channel_shuffle, get_model, list_models

__version__ = "0.1.0"

__all__ = ["Complexity", "UserError", "__version__", "channel_shuffle", "complexity", "get_model", "inference_model", "list_models"]
