"""Every vectorised piece of the model against the naive per-image reference (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_output, diversify_gates, randomize_batchnorm, small_config
from reference import forward_reference, gate_reference

from dr import skipping
from dr.bench.latency import _add_first_rows, _first_rows, calibrate_batchnorm, rows_moved_for_free, same_work
from dr.cell import DownTransform
from dr.config import preset
from dr.gate import SoftConditionalGate
from dr.gate_fast import FastSoftConditionalGate
from dr.model import MEMORY_FORMAT, DynamicRoutingNet
from dr.routes import named_route
from dr.skipping import add_rows, select_rows
from dr.space import Node


def make_model(images, seed=0, keep_open=True, **overrides) -> DynamicRoutingNet:
    torch.manual_seed(seed)
    model = DynamicRoutingNet(small_config(**overrides))
    calibrate_batchnorm(model, *images.shape[-2:], seed=seed)
    diversify_gates(model, images, seed, keep_open=keep_open)
    return model.eval()


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softmax"])
@pytest.mark.parametrize("small", [False, True])
def test_gate_matches_naive_reference(activation, small):
    torch.manual_seed(0)
    gate = SoftConditionalGate(16, 3, activation=activation, small=small)
    randomize_batchnorm(gate)
    gate.logit.weight.data.normal_(0, 2.0)
    gate.eval()
    x = torch.randn(5, 16, 12, 20)
    with torch.no_grad():
        batched = gate(x)
        naive = torch.stack([gate_reference(gate, x[i : i + 1]) for i in range(5)])
    assert batched.shape == (5, 3)
    torch.testing.assert_close(batched, naive, rtol=1e-5, atol=1e-6)
    if activation == "tanh":
        assert (batched == 0).any() and (batched > 0).any(), "max(0, tanh) should close some paths here"


@pytest.fixture
def two_threads():
    """torch on two threads (the fast gate's training computation; on one it runs the plain one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softmax"])
@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("size", [(12, 20), (13, 22)])  # the small gate's input: 3x5 from either
def test_fast_gate_equals_the_plain_gate_in_value_and_gradient(two_threads, activation, small, size):
    """dr.gate_fast computes dr.gate's function with the same parameters, only faster (with two
    threads its own computation runs in training too)."""
    torch.manual_seed(1)
    plain = SoftConditionalGate(16, 3, activation=activation, small=small)
    randomize_batchnorm(plain)
    plain.logit.weight.data.normal_(0, 2.0)
    fast = FastSoftConditionalGate(16, 3, activation=activation, small=small)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(5, 16, *size)
    for mode in ("train", "eval"):
        getattr(plain, mode)(), getattr(fast, mode)()
        with torch.no_grad():
            torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-6)
        # in training both updated their batch normalisation's running statistics alike
        for name, buffer in plain.named_buffers():
            torch.testing.assert_close(dict(fast.named_buffers())[name], buffer, rtol=1e-5, atol=1e-6, msg=name)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = plain(xa), fast(xb)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        weights = torch.randn_like(a)
        (a * weights).sum().backward()
        (b * weights).sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-6)
        for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
            p.grad, q.grad = None, None


def test_a_network_with_plain_gates_computes_the_same_as_with_fast_ones(images):
    torch.manual_seed(0)
    fast = make_model(images, seed=2)
    plain = DynamicRoutingNet(fast.config, fast_gate=False)
    plain.load_state_dict(fast.state_dict())
    plain.eval()
    assert not any(isinstance(m, FastSoftConditionalGate) for m in plain.modules())
    with torch.no_grad():
        for mode in ("skip", "masked"):
            a, b = plain(images, mode=mode), fast(images, mode=mode)
            assert_same_output(b.logits, a.logits)
            assert all(torch.equal(a.gates[n] > 0, b.gates[n] > 0) for n in a.gates)


def test_fresh_gates_with_the_small_init_open_every_path():
    """beta = 1.5 and a small w2 (N(0, 0.01)): every alpha starts near tanh(1.5) = 0.905."""
    torch.manual_seed(0)
    model = DynamicRoutingNet(small_config(gate_init="small")).train()
    out = model(torch.randn(2, 3, 64, 64))
    for node, alpha in out.gates.items():
        assert torch.all((alpha - 0.905).abs() < 0.05), (node, alpha)


def test_fresh_gates_with_the_papers_init_differ_per_image_and_close_a_few_paths():
    """He-normal w2 (the paper, the authors' code): G = beta + a term of the image's order one, so
    alphas differ between images from the start and a few paths start closed."""
    values = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = DynamicRoutingNet(small_config(gate_init="he")).train()
        with torch.no_grad():
            out = model(torch.randn(8, 3, 64, 64))
        values.append(torch.cat([a.flatten() for a in out.gates.values()]))
        spread = torch.stack([a.std(dim=0).mean() for a in out.gates.values()]).mean()
        assert spread > 0.02, "alphas differ between images"
    alphas = torch.cat(values)
    closed = float((alphas == 0).float().mean())
    assert 0 < closed < 0.2, closed
    assert float(alphas[alphas > 0].mean()) > 0.6, "most paths start well open"


def test_network_fix_has_no_gates_and_alpha_one():
    model = DynamicRoutingNet(small_config(activation="fix")).eval()
    assert not any(isinstance(m, SoftConditionalGate) for m in model.modules())
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert all(torch.all(a == 1) for a in out.gates.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skip_masked_and_naive_agree_when_no_node_is_starved(seed, images):
    model = make_model(images, seed, keep_open=True)
    with torch.no_grad():
        skip = model(images, mode="skip")
        masked = model(images, mode="masked")
        soft = model(images, mode="soft")  # Eq. 4 is the same dense computation
    # the gates really differ per image: at least one node has an open/closed mix across the batch
    assert any(((a > 0).any(0) & (a == 0).any(0)).any() for a in skip.gates.values())
    assert all(bool(a.all()) for a in skip.active.values()), "fixture should starve no node"
    assert_same_output(skip.logits, masked.logits)
    torch.testing.assert_close(soft.logits, masked.logits)
    for i in range(images.shape[0]):
        with torch.no_grad():
            logits, alphas, ran, expected, real = forward_reference(model, images[i : i + 1], skip_starved=True)
        assert_same_output(skip.logits[i : i + 1], logits)
        for node, alpha in alphas.items():
            torch.testing.assert_close(skip.gates[node][i], torch.tensor(alpha), rtol=1e-4, atol=1e-4)
        assert skip.expected_cost[i].item() == pytest.approx(expected, rel=1e-5)
        assert skip.real_cost[i].item() == pytest.approx(real, rel=1e-6)
        assert masked.real_cost[i].item() == pytest.approx(real, rel=1e-6)


@pytest.mark.parametrize("seed", [5, 6])  # seeds whose starved nodes change the dense output (stem of semantics 2)
def test_starved_nodes_are_skipped_per_image(seed, images):
    """With closable keep paths some nodes get no open input: skip leaves them out, per image."""
    model = make_model(images, seed, keep_open=False)
    with torch.no_grad():
        skip = model(images, mode="skip")
        masked = model(images, mode="masked")
        one_by_one = [model(images[i : i + 1], mode="skip") for i in range(images.shape[0])]
    starved = sum(int((~a).sum()) for a in skip.active.values())
    assert starved > 0, "this seed should starve some nodes"
    for i, single in enumerate(one_by_one):
        assert_same_output(skip.logits[i : i + 1], single.logits)
        assert skip.real_cost[i].item() == pytest.approx(single.real_cost.item(), rel=1e-6)
        with torch.no_grad():
            ref_skip = forward_reference(model, images[i : i + 1], skip_starved=True)
            ref_masked = forward_reference(model, images[i : i + 1], skip_starved=False)
        assert_same_output(single.logits, ref_skip[0])
        # the dense forward closes a starved node's gates too, so training and skipping agree; the
        # authors' dense execution (a starved node still runs on its zero input) differs
        assert_same_output(masked.logits[i : i + 1], ref_skip[0])
        assert skip.real_cost[i].item() == pytest.approx(ref_skip[4], rel=1e-6)
        assert masked.expected_cost[i].item() == pytest.approx(ref_skip[3], rel=1e-5)
        differs = (ref_masked[0] - ref_skip[0]).abs().max().item()
        assert differs > 1e-3 or not any(k not in ref_skip[2] for k in ref_masked[2]), (
            "the reference sees the difference"
        )


def test_batched_per_image_routes_equal_one_by_one(images):
    torch.manual_seed(5)
    model = DynamicRoutingNet(small_config())
    calibrate_batchnorm(model, *images.shape[-2:])  # fresh gates: every path open, the routes decide
    model.eval()
    names = ["fcn32s", "unet", "hrnetv2", "full"]
    routes = [named_route(n, model.space) for n in names]
    with torch.no_grad():
        batched = model(images, route=routes, mode="skip")
        masked = model(images, route=routes, mode="masked")
        for i, route in enumerate(routes):
            single = model(images[i : i + 1], route=route, mode="skip")
            assert_same_output(batched.logits[i : i + 1], single.logits)
            ref = forward_reference(model, images[i : i + 1], route=route, skip_starved=True)
            assert_same_output(single.logits, ref[0])
            assert batched.real_cost[i].item() == pytest.approx(ref[4], rel=1e-6)
    assert_same_output(batched.logits, masked.logits)
    assert len(set(batched.real_cost.tolist())) == len(names), "different routes, different costs"


def test_eq4_bypass_passes_input_on_keep_side():
    """Training forward: an image whose gates at a node are all zero passes X on the keep side."""
    torch.manual_seed(0)
    model = DynamicRoutingNet(small_config(depth=2)).train()
    node, coarser, nxt = Node(1, 0), Node(1, 1), Node(2, 0)
    seen = {}

    def close_first_image(module, inputs, output):
        seen["x10"] = inputs[0].detach().clone()
        out = output.clone()
        out[0] = 0.0  # image 0: every path of node (1, 1/4) closed
        return out

    hooks = [
        model.node(node).gate.register_forward_hook(close_first_image),
        model.node(coarser)
        .transforms["up"]
        .register_forward_hook(lambda m, i, o: seen.setdefault("up", o.detach().clone())),
        model.node(nxt).gate.register_forward_pre_hook(
            lambda m, args: seen.setdefault("x20", args[0].detach().clone())
        ),
    ]
    out = model(torch.randn(2, 3, 64, 64), mode="soft")
    for h in hooks:
        h.remove()
    alpha_up = out.gates[coarser][:, 1].detach().view(-1, 1, 1, 1)  # gate order keep, up, down
    arriving_up = alpha_up * seen["up"]
    # X_{2,1/4} = Y_keep(1, 1/4) + Y_up(1, 1/8 -> 1/4); for image 0, Y_keep is X_{1,1/4} itself
    torch.testing.assert_close(seen["x20"][0], seen["x10"][0] + arriving_up[0])
    assert not torch.allclose(seen["x20"][1], seen["x10"][1] + arriving_up[1]), "image 1 is not bypassed"
    assert torch.all(out.gates[node][0] == 0) and torch.all(out.gates[node][1] > 0)
    costs = model.cost_model(64, 64)
    saved = costs.cell_cost[node].flops + sum(costs.path_cost[p].flops for p in model.space.paths_out(node))
    assert (out.real_cost[1] - out.real_cost[0]).item() == pytest.approx(saved, rel=1e-6)
    assert bool(out.active[nxt][0]), "the bypass keeps the next node at this scale running"


def test_gradients_reach_every_gate_parameter():
    """Eq. 4 (through the logits) and the budget loss (through the expected cost) train the gates."""
    from dr.budget import BudgetLoss

    torch.manual_seed(0)
    model = DynamicRoutingNet(small_config(depth=3)).train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 3, (2, 64, 64))
    out = model(images)
    seg = torch.nn.functional.cross_entropy(out.logits, labels)
    grads_seg = torch.autograd.grad(seg, [p for n, p in model.named_parameters() if ".gate." in n], retain_graph=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads_seg)
    budget = BudgetLoss.from_preset("A", model.cost_model(64, 64).routing_space_total.flops, scheduled=False)
    loss_c = budget(out)
    gate_params = [(n, p) for n, p in model.named_parameters() if ".gate." in n]
    grads_budget = torch.autograd.grad(loss_c, [p for _, p in gate_params], allow_unused=True)
    for (name, _), g in zip(gate_params, grads_budget):
        assert g is not None and g.abs().sum() > 0, f"budget loss gives no gradient to {name}"


# ---------------------------------------------------------------------- the channels-last layout
@pytest.mark.parametrize("shape", [(3, 8, 16, 16), (2, 8, 15, 17)])  # the first corrupted memory with stride 2
def test_down_transform_is_the_stride_2_convolution(two_threads, shape):
    """T_{s->s/2} (ReLU, conv1x1 stride 2, BN, ReLU), computed as a stride-1 convolution of the even
    pixels, against the stride-2 convolution written out on NCHW tensors: values and gradients."""
    torch.manual_seed(0)
    down = DownTransform(shape[1]).to(memory_format=MEMORY_FORMAT).train()
    conv, bn = down.proj[0], down.proj[1]
    h = torch.randn(shape).contiguous(memory_format=MEMORY_FORMAT).requires_grad_()
    h_ref = h.detach().contiguous().requires_grad_()
    weight = conv.weight.detach().clone(memory_format=torch.contiguous_format).requires_grad_()  # NCHW strides
    y = down(h)
    z = torch.nn.functional.conv2d(torch.relu(h_ref), weight, stride=2)
    mean, var = z.mean(dim=(0, 2, 3), keepdim=True), z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    y_ref = torch.relu(
        (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.detach()[:, None, None] + bn.bias.detach()[:, None, None]
    )
    assert y.shape == (shape[0], 2 * shape[1], (shape[2] + 1) // 2, (shape[3] + 1) // 2)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    seed = torch.randn(y.shape)
    (y * seed).sum().backward()
    (y_ref * seed).sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_rows_are_selected_and_added_as_index_select_and_index_add_do_in_the_tensors_layout(layout):
    torch.manual_seed(0)
    x = torch.randn(6, 5, 4, 3).contiguous(memory_format=layout)
    picked = select_rows(x, torch.tensor([4, 1, 3]))
    assert torch.equal(picked, x[[4, 1, 3]]) and picked.is_contiguous(memory_format=layout)
    # parts of the images (0, 1, 3, 4, 5): one holding all five, two holding some; any order of parts
    rows = (0, 1, 3, 4, 5)
    whole = torch.randn(5, 5, 4, 3).contiguous(memory_format=layout)
    some = torch.randn(3, 5, 4, 3).contiguous(memory_format=layout)
    other = torch.randn(1, 5, 4, 3).contiguous(memory_format=layout)
    expected = whole.clone()
    expected[[1, 3, 4]] += some  # rows 1, 4, 5 sit at positions 1, 3, 4
    expected[[2]] += other  # row 3 at position 2
    for parts in ([(whole, rows), (some, (1, 4, 5)), (other, (3,))], [(other, (3,)), (some, (1, 4, 5)), (whole, rows)]):
        out = add_rows([(y.clone(), held) for y, held in parts], rows)
        torch.testing.assert_close(out, expected)
        assert out.is_contiguous(memory_format=layout)
    # no part holds every row: the rows no part reaches stay zero
    out = add_rows([(some, (1, 4, 5))], rows)
    assert torch.equal(out[[0, 2]], torch.zeros(2, 5, 4, 3)) and torch.equal(out[[1, 3, 4]], some)
    assert out.is_contiguous(memory_format=layout)
    first = whole.clone()
    assert add_rows([(first, rows), (some, (1, 4, 5))], rows) is first  # summed in place, no copy
    # two whole parts, and parts in the other layout: the sum keeps the first whole part's layout
    other_layout = torch.contiguous_format if layout == torch.channels_last else torch.channels_last
    parts = [(whole.clone(), rows), (whole.contiguous(memory_format=other_layout), rows)]
    parts += [(some.contiguous(memory_format=other_layout), (1, 4, 5)), (other, (3,))]
    expected_twice = expected + whole
    out = add_rows(parts, rows)
    torch.testing.assert_close(out, expected_twice)
    assert out.is_contiguous(memory_format=layout)


def test_rows_moved_for_free_runs_the_same_work_on_the_wrong_rows_and_is_undone():
    """bench's floor of a mixed batch: the same gates open the same paths, so the same work runs
    (equal real cost and gate pattern), but rows are sliced, not gathered, so the logits differ; and
    dr.skipping gets its own functions back, also after an error."""
    torch.manual_seed(0)
    model = DynamicRoutingNet(preset("tiny", gate_init="small"))  # every gate open: the routes decide
    calibrate_batchnorm(model, 64, 64)
    model.eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    routes = [named_route(name, model.space) for name in ("fcn32s", "full", "unet", "deeplabv3")]
    own = skipping.select_rows, skipping.add_rows
    with torch.inference_mode():
        true = model(images, route=routes)
        with rows_moved_for_free():
            assert (skipping.select_rows, skipping.add_rows) != own
            floor = model(images, route=routes)
        assert (skipping.select_rows, skipping.add_rows) == own
        assert torch.equal(floor.total_real_cost, true.total_real_cost)
        assert all(torch.equal(floor.gates[n] > 0, true.gates[n] > 0) for n in true.gates)
        assert all(torch.equal(floor.active[n], true.active[n]) for n in true.active)
        assert (floor.logits - true.logits).abs().max() > 1e-3  # other images' rows: other values
        assert same_work(floor, true) and not same_work(model(images, route=routes[::-1]), true)
        with pytest.raises(RuntimeError, match="inside"), rows_moved_for_free():
            raise RuntimeError("inside")
        assert (skipping.select_rows, skipping.add_rows) == own


def test_the_floors_stand_ins_slice_the_first_rows_without_copying():
    x = torch.randn(6, 5, 4, 3).contiguous(memory_format=torch.channels_last)
    picked = _first_rows(x, torch.tensor([4, 1, 3]))
    assert picked.shape == (3, 5, 4, 3) and picked.data_ptr() == x.data_ptr()  # a view: nothing moved
    rows = (0, 1, 3, 4, 5)
    whole, some, other = torch.randn(5, 5, 4, 3), torch.randn(3, 5, 4, 3), torch.randn(1, 5, 4, 3)
    expected = whole.clone()
    expected[:3] += some
    expected[:1] += other
    first = whole.clone()
    out = _add_first_rows([(other, (3,)), (first, rows), (some, (1, 4, 5))], rows)
    assert out is first  # into the whole part, in place
    torch.testing.assert_close(out, expected)  # (sums in another order: float rounding)
    out = _add_first_rows([(some, (1, 4, 5)), (other, (3,))], rows)  # no whole part: a zero buffer
    torch.testing.assert_close(out[:3], some + torch.cat([other, torch.zeros(2, 5, 4, 3)]))
    assert torch.equal(out[3:], torch.zeros(2, 5, 4, 3))


def test_every_convolution_of_a_mixed_batch_runs_channels_last(images):
    """No piece of the skipping forward hands a convolution an NCHW tensor (which it would reorder)."""
    model = make_model(images, keep_open=False)
    layouts = []

    def record(module, args):
        layouts.append(args[0].is_contiguous(memory_format=MEMORY_FORMAT))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    names = ["fcn32s", "unet", "hrnetv2", "full"]
    with torch.no_grad():
        model(images, route=[named_route(n, model.space) for n in names], mode="skip")
    for handle in handles:
        handle.remove()
    assert len(layouts) > 20 and all(layouts), f"{layouts.count(False)} of {len(layouts)} convolutions got NCHW"


def test_the_layout_changes_no_result(images):
    """The same seed gives the same weights in either layout, and the same logits and gradients."""
    models = {}
    for layout in (torch.channels_last, torch.contiguous_format):
        torch.manual_seed(3)
        models[layout] = DynamicRoutingNet(small_config(), memory_format=layout).train()
    cl, nchw = models[torch.channels_last], models[torch.contiguous_format]
    assert all(torch.equal(a, b) for a, b in zip(cl.state_dict().values(), nchw.state_dict().values()))
    assert cl.stem[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert nchw.stem[0][0].weight.is_contiguous()
    outs = [m(images) for m in (cl, nchw)]
    assert_same_output(outs[0].logits.detach(), outs[1].logits.detach())
    for out in outs:
        out.logits.square().mean().backward()
    for a, b in zip(cl.parameters(), nchw.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)
    routes = [named_route(n, cl.space) for n in ["fcn32s", "unet", "hrnetv2", "full"]]
    with torch.no_grad():
        skipped = [m.eval()(images, route=routes, mode="skip").logits for m in (cl, nchw)]
    assert_same_output(skipped[0], skipped[1])
