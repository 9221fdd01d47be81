"""Stand-ins for NVIDIA's StyleGAN2-ADA networks that pickle exactly as ``torch_utils.persistence``
pickles them, and an independent float64 oracle of NVIDIA's forward written from the facts.

Each stand-in module pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
with ``meta = {type: 'class', version: 6, module_src, class_name, state: __dict__}``; the state
holds ``_init_args`` / ``_init_kwargs`` as persistence stores them. Weights are random (biases
too), so every mapped tensor matters.
"""
import contextlib
import math
import pickle
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

MODULE_SRC = "# training/networks.py stand-in: this source is never run by the importer\n"
DT = torch.float64


def _reconstruct_persistent_obj(meta):  # never called: only its name is pickled
    raise AssertionError("the importer must not call NVIDIA's reconstruct function")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"


class Persistent(nn.Module):
    """A module that pickles like an NVIDIA ``@persistence.persistent_class`` instance."""

    module_src = MODULE_SRC

    def __init__(self, **kwargs):
        super().__init__()
        self._init_args = ()
        self._init_kwargs = dict(kwargs)

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src,
                    class_name=type(self).__name__, state=dict(self.__dict__))
        return _reconstruct_persistent_obj, (meta,)


@contextlib.contextmanager
def _persistence_module():
    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    saved = {k: sys.modules.get(k) for k in (pkg.__name__, mod.__name__)}
    sys.modules.update({pkg.__name__: pkg, mod.__name__: mod})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def dump(obj, path, protocol=3):
    """Pickle ``obj`` as NVIDIA's training loop does (plain ``pickle.dump``)."""
    with _persistence_module(), open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


class FullyConnectedLayer(Persistent):
    def __init__(self, in_f, out_f, bias_init=0.0, lr_multiplier=1.0, activation="linear", gen=None):
        super().__init__(in_features=in_f, out_features=out_f, bias_init=bias_init,
                         lr_multiplier=lr_multiplier, activation=activation)
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_f, in_f, generator=gen) / lr_multiplier)
        self.bias = nn.Parameter(bias_init + 0.2 * torch.randn(out_f, generator=gen) / lr_multiplier)
        self.weight_gain = lr_multiplier / math.sqrt(in_f)
        self.bias_gain = lr_multiplier


class MappingNetwork(Persistent):
    def __init__(self, z_dim, w_dim, num_ws, num_layers, c_dim=0, gen=None):
        super().__init__(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers)
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, 0.995
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(z_dim if i == 0 else w_dim, w_dim,
                                                        lr_multiplier=0.01, activation="lrelu", gen=gen))
        self.register_buffer("w_avg", torch.randn(w_dim, generator=gen))


def _filter():
    f = torch.tensor([1.0, 3, 3, 1])
    return torch.outer(f, f) / f.sum() ** 2


class SynthesisLayer(Persistent):
    def __init__(self, cin, cout, w_dim, resolution, up=1, conv_clamp=None, gen=None):
        super().__init__(in_channels=cin, out_channels=cout, w_dim=w_dim, resolution=resolution,
                         up=up, conv_clamp=conv_clamp)
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, True, "lrelu"
        self.conv_clamp, self.padding, self.act_gain = conv_clamp, 1, math.sqrt(2)
        self.register_buffer("resample_filter", _filter())
        self.affine = FullyConnectedLayer(w_dim, cin, bias_init=1, gen=gen)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3, generator=gen))
        self.register_buffer("noise_const", torch.randn(resolution, resolution, generator=gen))
        self.noise_strength = nn.Parameter(0.3 * torch.randn((), generator=gen))
        self.bias = nn.Parameter(0.3 * torch.randn(cout, generator=gen))


class ToRGBLayer(Persistent):
    def __init__(self, cin, w_dim, conv_clamp=None, gen=None):
        super().__init__(in_channels=cin, out_channels=3, w_dim=w_dim, conv_clamp=conv_clamp)
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, cin, bias_init=1, gen=gen)
        self.weight = nn.Parameter(torch.randn(3, cin, 1, 1, generator=gen))
        self.bias = nn.Parameter(0.3 * torch.randn(3, generator=gen))
        self.weight_gain = 1 / math.sqrt(cin)


class SynthesisBlock(Persistent):
    def __init__(self, cin, cout, w_dim, resolution, conv_clamp=None, architecture="skip", gen=None):
        super().__init__(in_channels=cin, out_channels=cout, w_dim=w_dim, resolution=resolution,
                         img_channels=3, architecture=architecture, conv_clamp=conv_clamp)
        self.in_channels, self.resolution, self.architecture = cin, resolution, architecture
        self.num_conv, self.num_torgb = (1 if cin == 0 else 2), 1
        self.register_buffer("resample_filter", _filter())
        if cin == 0:
            self.const = nn.Parameter(torch.randn(cout, resolution, resolution, generator=gen))
        else:
            self.conv0 = SynthesisLayer(cin, cout, w_dim, resolution, up=2, conv_clamp=conv_clamp, gen=gen)
        self.conv1 = SynthesisLayer(cout, cout, w_dim, resolution, conv_clamp=conv_clamp, gen=gen)
        self.torgb = ToRGBLayer(cout, w_dim, conv_clamp=conv_clamp, gen=gen)


class SynthesisNetwork(Persistent):
    def __init__(self, w_dim, img_resolution, channel_base, channel_max, conv_clamp=None,
                 architecture="skip", gen=None):
        super().__init__(w_dim=w_dim, img_resolution=img_resolution, img_channels=3,
                         channel_base=channel_base, channel_max=channel_max, conv_clamp=conv_clamp)
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            cin = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(cin, channels[res], w_dim, res, conv_clamp=conv_clamp,
                                   architecture=architecture, gen=gen)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)


class Generator(Persistent):
    def __init__(self, w_dim=16, img_resolution=32, channel_base=512, channel_max=16, mapping_layers=2,
                 conv_clamp=None, c_dim=0, architecture="skip", seed=0):
        gen = torch.Generator().manual_seed(seed)
        super().__init__(z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                         img_channels=3, mapping_kwargs={"num_layers": mapping_layers},
                         synthesis_kwargs={"channel_base": channel_base, "channel_max": channel_max,
                                           "conv_clamp": conv_clamp, "num_fp16_res": 4})
        self.z_dim, self.c_dim, self.w_dim = w_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, 3
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, channel_base, channel_max,
                                          conv_clamp, architecture, gen=gen)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(w_dim, w_dim, self.num_ws, mapping_layers, c_dim=c_dim, gen=gen)


# ------------------------------------------------------------------------------------------------
# Oracle of NVIDIA's forward, float64, written from the facts (explicit padding, zero insertion and
# shifted-slice correlations; no conv2d / conv_transpose2d / stylegan2 code).

def _t(p):
    return p.detach().to(DT)


def o_fc(layer, x):
    """FullyConnectedLayer: x @ (weight * weight_gain).T + bias * bias_gain, then the activation."""
    y = x @ (_t(layer.weight) * layer.weight_gain).T + _t(layer.bias) * layer.bias_gain
    return F.leaky_relu(y, 0.2) * math.sqrt(2) if layer.activation == "lrelu" else y


def o_mapping(G, z, psi=1.0):
    """normalize_2nd_moment -> fc layers -> broadcast to num_ws -> lerp every row towards w_avg."""
    x = z.to(DT)
    x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
    for i in range(G.mapping.num_layers):
        x = o_fc(getattr(G.mapping, f"fc{i}"), x)
    ws = x[:, None].repeat(1, G.num_ws, 1)
    w_avg = _t(G.mapping.w_avg)
    return w_avg + psi * (ws - w_avg) if psi != 1 else ws


def o_pad(x, p0, p1):
    h, w = x.shape[2:]
    out = x.new_zeros(*x.shape[:2], h + p0 + p1, w + p0 + p1)
    out[:, :, p0:p0 + h, p0:p0 + w] = x
    return out


def o_correlate(x, w):
    """x [B, I, H, W], per-sample w [B, O, I, k, k] -> valid correlation [B, O, H-k+1, W-k+1]."""
    k = w.shape[-1]
    oh, ow = x.shape[2] - k + 1, x.shape[3] - k + 1
    out = x.new_zeros(x.shape[0], w.shape[1], oh, ow)
    for dy in range(k):
        for dx in range(k):
            out += torch.einsum("bihw,boi->bohw", x[:, :, dy:dy + oh, dx:dx + ow], w[..., dy, dx])
    return out


def o_zero_insert(x):
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, 2 * h - 1, 2 * w - 1)
    out[:, :, ::2, ::2] = x
    return out


def o_filter(x, p0, p1, gain):
    """upfirdn2d's FIR step with the normalised [1,3,3,1] filter (symmetric: flip-free)."""
    f = _filter().to(DT) * gain
    x = o_pad(x, p0, p1)
    per = f[None, None].expand(x.shape[0], 1, 1, 4, 4)
    return torch.cat([o_correlate(x[:, c:c + 1], per) for c in range(x.shape[1])], dim=1)


def o_layer(layer, x, w):
    """SynthesisLayer with noise_mode='const' in fp32 semantics, in float64."""
    styles = o_fc(layer.affine, w)  # [B, I]
    weight = _t(layer.weight)[None] * styles[:, None, :, None, None]  # no weight gain
    weight = weight * (weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
    if layer.up == 2:
        # conv_transpose2d(x, w.T, stride 2): zero insertion, pad k-1, correlate with the flipped kernel
        x = o_correlate(o_pad(o_zero_insert(x), 2, 2), weight.flip([3, 4]))  # [2H+1]
        x = o_filter(x, 1, 1, gain=4)
    else:
        x = o_correlate(o_pad(x, 1, 1), weight)
    x = x + _t(layer.noise_const) * _t(layer.noise_strength)
    x = F.leaky_relu(x + _t(layer.bias)[None, :, None, None], 0.2) * math.sqrt(2)
    return x if layer.conv_clamp is None else x.clamp(-layer.conv_clamp, layer.conv_clamp)


def o_torgb(layer, x, w):
    styles = o_fc(layer.affine, w) * layer.weight_gain
    weight = _t(layer.weight)[None] * styles[:, None, :, None, None]
    y = o_correlate(x, weight) + _t(layer.bias)[None, :, None, None]
    return y if layer.conv_clamp is None else y.clamp(-layer.conv_clamp, layer.conv_clamp)


def o_synthesis(G, ws):
    """Blocks b4..bR ('skip'): block uses ws rows [w_idx, w_idx + num_conv + 1), w_idx += num_conv."""
    ws = ws.to(DT)
    x = img = None
    w_idx = 0
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{res}")
        rows = ws[:, w_idx:w_idx + block.num_conv + 1]
        w_idx += block.num_conv
        if res == 4:
            x = _t(block.const)[None].repeat(ws.shape[0], 1, 1, 1)
            x = o_layer(block.conv1, x, rows[:, 0])
        else:
            x = o_layer(block.conv0, x, rows[:, 0])
            x = o_layer(block.conv1, x, rows[:, 1])
        if img is not None:
            img = o_filter(o_pad(o_zero_insert(img), 0, 1), 2, 1, gain=4)  # upsample2d
        y = o_torgb(block.torgb, x, rows[:, -1])
        img = y if img is None else img + y
    return img
