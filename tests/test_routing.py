"""V2's two routings (torchvision's half split + shuffle, Megvii's even/odd split) are one network:
``convert_routing`` moves the permutation into the weights, at inference and during training."""

import pytest
import torch

from helpers import randomised
from shufflenet import get_model
from shufflenet.models.v2 import convert_routing
from shufflenet.weights import load_checkpoint, save_checkpoint


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"])
def test_even_odd_routing_computes_the_same_logits(name):
    model = randomised(name)
    even_odd = convert_routing(model, "even_odd")
    assert even_odd.routing == "even_odd" and model.routing == "shuffle"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        unpermuted = get_model(name, routing="even_odd").eval()
        unpermuted.load_state_dict(model.state_dict())
        assert (unpermuted(x) - reference).abs().max() > 0.1  # routing alone changes the function
        torch.testing.assert_close(even_odd(x), reference, rtol=0, atol=1e-5 * reference.abs().max().item())
    back = convert_routing(even_odd, "shuffle")
    assert all(torch.equal(value, back.state_dict()[key]) for key, value in model.state_dict().items())


def test_training_steps_commute_with_the_conversion():
    """Gradients, BN batch statistics and momentum all follow the permutation: training in even/odd
    routing and converting gives what training in torchvision's routing gives. In float64, because
    a freshly initialised net on a batch of 8 amplifies float32 rounding (a 1e-6 change of the input
    moves the weights after two steps by more than the steps themselves)."""
    torch.manual_seed(0)
    model = get_model("shufflenet_v2_x0_5", num_classes=10, small_input=True).double().train()
    images, labels = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))

    def trained(net):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(images), labels).backward()
            optimizer.step()
        return net

    reference = trained(convert_routing(model, "shuffle")).state_dict()
    via_even_odd = convert_routing(trained(convert_routing(model, "even_odd")), "shuffle").state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(via_even_odd[key], value, rtol=0, atol=1e-10, msg=key)


def test_routing_survives_a_checkpoint_and_the_fast_path(tmp_path):
    from shufflenet.deploy.fastpath import optimize

    model = convert_routing(randomised("shufflenet_v2_x0_5"), "even_odd")
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "m.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert loaded.routing == "even_odd"
        assert torch.equal(loaded(x), model(x))
        torch.testing.assert_close(optimize(loaded)(x), model(x), rtol=0, atol=1e-4)


def test_megvii_layout_has_one_routing():
    with pytest.raises(ValueError, match="routing"):
        get_model("shufflenet_v2_x0_5", layout="megvii", routing="shuffle")
    with pytest.raises(ValueError, match="torchvision layout"):
        convert_routing(get_model("shufflenet_v2_x0_5", layout="megvii"), "shuffle")
