"""DynamicVis backbone, written from the official model's documented semantics (no upstream code).

Module and parameter names mirror the official ``DynamicVisBackbone`` so that its ``state_dict`` keys and
shapes are identical (``layers.<stage>.0`` patch embed, ``layers.<stage>.1.<block>`` sparse mixers,
``layers.<stage>.2`` stage LayerNorm) and official weights load with ``strict=True``.

Inference semantics (see the golden README): each block routes tokens with a softmax gate, keeps the
``N // keep_ratio`` heaviest with ``torch.topk`` (scanned in descending-weight order), prepends one
global token per grid row, runs a bidirectional Mamba block, and writes ``w * mamba_out`` back into a
``x * w`` residual, then adds the block input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.runtime import keep_cpu_autocast_off
from models.scan import ScanFn, auto_scan_name, resolve_scan, selective_scan_reference


@dataclass(frozen=True)
class ArchSpec:
    name: str
    channels: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]


ARCHS: dict[str, ArchSpec] = {
    "b": ArchSpec("b", (96, 192, 384, 768), (2, 4, 16, 4)),
    "l": ArchSpec("l", (128, 256, 512, 1024), (2, 4, 32, 4)),
}
ARCH_ALIASES = {"b": "b", "base": "b", "l": "l", "large": "l"}

SUPPORTED_PATH_TYPES = ("forward", "forward_reverse_mean")
# Official path types that need parameters or randomness the released weights do not carry.
UNSUPPORTED_PATH_TYPES = ("shuffle", "forward_reverse_gate", "forward_reverse_shuffle_gate",
                          "forward_reverse_shuffle_mean")


def canonical_arch(arch: str) -> str:
    """Map 'b'/'base'/'l'/'large' (any case) to 'b' or 'l'."""
    try:
        return ARCH_ALIASES[str(arch).lower()]
    except KeyError:
        raise ValueError(f"unknown DynamicVis arch {arch!r}; use one of {sorted(ARCH_ALIASES)}") from None


def normalize_sampling_scale(sampling_scale: float | Mapping | None) -> dict | None:
    """Accept 0.1 or dict(type='fixed'|'decay', val=0.1); only affects training (Gumbel noise on routing)."""
    if sampling_scale is None:
        return None
    if isinstance(sampling_scale, Mapping):
        kind = sampling_scale.get("type", "fixed")
        if kind not in ("fixed", "decay") or "val" not in sampling_scale:
            raise ValueError(f"sampling_scale must be a number or dict(type='fixed'|'decay', val=...), "
                             f"got {dict(sampling_scale)!r}")
        return {"type": kind, "val": float(sampling_scale["val"])}
    return {"type": "fixed", "val": float(sampling_scale)}


class PatchEmbed(nn.Module):
    """Conv2d with symmetric zero padding ``kernel // 2``, then LayerNorm over the flattened tokens."""

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int, stride: int, eps: float = 1e-6):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dims, eps=eps)

    def output_size(self, size: int) -> int:
        k, s, p = self.projection.kernel_size[0], self.projection.stride[0], int(self.projection.padding[0])
        return (size + 2 * p - k) // s + 1

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if x.device.type == "cpu" and x.shape[0] > 1:
            # One tile at a time on CPU: oneDNN picks another convolution algorithm for batch 1 than for
            # larger batches (1-ulp differences that grow to ~1e-5 by stage 3), and a tile's vector must not
            # depend on the batch it lands in. The convs are ~4% of the FLOPs and efficient at batch 1.
            x = torch.cat([self.projection(tile) for tile in x.contiguous().split(1)])
        else:
            x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class RMSNorm(nn.Module):
    """RMS normalisation computed in float32 (as the official MambaRMSNorm)."""

    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dims))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class MambaMixer(nn.Module):
    """Mamba (S6) mixer with the parameter layout of transformers' ``MambaMixer``.

    The selective scan is delegated to ``self.scan_fn(u, delta, A, Bm, C, D, z)`` (see ``models.scan``),
    so faster backends can be swapped in (``DynamicVisBackbone.set_scan``) without touching this module.
    """

    def __init__(self, dims: int, scan_fn: ScanFn = selective_scan_reference, state_size: int = 16,
                 expand: int = 2, conv_kernel: int = 4):
        super().__init__()
        inner = dims * expand
        self.state_size = state_size
        self.dt_rank = math.ceil(dims / 16)
        self.scan_fn = scan_fn
        self.conv1d = nn.Conv1d(inner, inner, conv_kernel, groups=inner, padding=conv_kernel - 1, bias=True)
        self.in_proj = nn.Linear(dims, 2 * inner, bias=False)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state_size + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dims, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.mix(self.in_proj(x)))

    def mix(self, xz: Tensor) -> Tensor:
        """in_proj output (B, L, 2E) -> gated scan output (B, L, E).

        Channels-last throughout: the scan gets (B, E, L) *views* of (B, L, E) tensors (the fused CPU
        kernel scans them in place; other backends accept any strides), so no transposed copies are made.
        The conv, SiLU and softplus run in float32 even under bf16 autocast (the scan is float32 anyway).
        """
        u, z = xz.float().chunk(2, dim=-1)
        fused_conv = getattr(self.scan_fn, "causal_conv_silu", None)   # the fused CPU scan brings one
        if fused_conv is not None and u.device.type == "cpu":
            u = fused_conv(u, self.conv1d.weight, self.conv1d.bias)
        else:
            u = F.silu(self._causal_conv(u))
        dt, Bm, C = torch.split(self.x_proj(u), [self.dt_rank, self.state_size, self.state_size], dim=-1)
        delta = F.softplus(self.dt_proj(dt).float())
        A = -torch.exp(self.A_log.float())
        y = self.scan_fn(u.transpose(1, 2), delta.transpose(1, 2), A, Bm.float(), C.float(), self.D,
                         z.transpose(1, 2))
        return y.transpose(1, 2)

    def _causal_conv(self, u: Tensor) -> Tensor:
        """Depthwise causal conv along L on (B, L, E), as K shifted multiply-adds (nn.Conv1d semantics:
        out_t = bias + sum_k w_k * u_{t+k-K+1}); cheaper than a grouped conv on CPU and layout-preserving."""
        weight = self.conv1d.weight[:, 0, :].float()                        # (E, K)
        kernel, length = weight.shape[1], u.shape[1]
        padded = F.pad(u, (0, 0, kernel - 1, 0))
        out = torch.addcmul(self.conv1d.bias.float(), padded[:, :length], weight[:, 0])  # type: ignore[union-attr]
        for k in range(1, kernel):
            out = torch.addcmul(out, padded[:, k:k + length], weight[:, k])
        return out


class MambaBlock(nn.Module):
    """Pre-norm Mamba over a token sequence (forward, or forward+reverse averaged) plus its own residual."""

    def __init__(self, dims: int, path_type: str, eps: float = 1e-5):
        super().__init__()
        self.path_type = path_type
        self.pre_norm = RMSNorm(dims, eps)
        self.mamba_layer = MambaMixer(dims)

    def forward(self, x: Tensor) -> Tensor:
        if self.path_type == "forward":
            return x + self.mamba_layer(self.pre_norm(x))
        # Both directions share the mixer and in_proj/RMSNorm act per token, so the reversed sequence's
        # projection is the flip of the forward one; out_proj is linear without bias, so the mean of the
        # two outputs is out_proj of the mean. Same result as running the 2B batch end to end (up to
        # float rounding), with half the projection FLOPs.
        batch = x.shape[0]
        mixer = self.mamba_layer
        xz = mixer.in_proj(self.pre_norm(x))
        both = mixer.mix(torch.cat([xz, torch.flip(xz, [1])], dim=0))
        forward_y, reverse_y = torch.split(both, batch, dim=0)
        return x + mixer.out_proj((forward_y + torch.flip(reverse_y, [1])) / 2)


class SpatialSparseMixer(nn.Module):
    """One DynamicVis block: softmax routing, top-k token selection, global row tokens, Mamba, residuals."""

    def __init__(self, dims: int, keep_ratio: int, num_global_tokens: int, path_type: str,
                 sampling_scale: dict | None):
        super().__init__()
        self.keep_ratio = keep_ratio
        self.num_global_tokens = num_global_tokens
        self.sampling_scale = sampling_scale
        self.spatial_gate = nn.Linear(dims, 1, bias=False)
        self.spatial_mamba_mixer = MambaBlock(dims, path_type)

    def _selection_weights(self, logits: Tensor, weights: Tensor) -> Tensor:
        """Weights used to pick tokens: the routing weights, plus Gumbel noise in training (as upstream)."""
        scale = self.sampling_scale
        if not self.training or scale is None or scale["val"] <= 0:
            return weights.detach()
        if scale["type"] != "fixed":
            raise NotImplementedError("sampling_scale type 'decay' needs the training epoch; only 'fixed' "
                                      "is supported in training mode")
        noise = torch.distributions.Gumbel(0.0, scale["val"]).rsample(logits.shape).to(logits.device)
        return F.softmax(logits.detach() + noise, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        rows = torch.arange(batch, device=x.device)[:, None]
        if tokens % self.num_global_tokens == 0:   # adaptive average pooling over equal row segments
            global_tokens = x.reshape(batch, self.num_global_tokens, -1, x.shape[-1]).mean(2)
        else:
            global_tokens = F.adaptive_avg_pool1d(x.permute(0, 2, 1).contiguous(),
                                                  self.num_global_tokens).permute(0, 2, 1)
        # Routing in float32 even under autocast: bf16 logits would change which tokens are kept.
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.spatial_gate.weight.float()).squeeze(-1)   # (B, N)
        weights = F.softmax(logits, dim=1)
        # torch.topk (sorted, largest) fixes both which tokens are kept and the scan order; its choice
        # among exactly tied (underflowed) weights is part of the official numerics.
        _, selected = torch.topk(self._selection_weights(logits, weights), tokens // self.keep_ratio, dim=-1)
        kept_weights = weights[rows, selected]
        sequence = torch.cat([global_tokens, x[rows, selected]], dim=1)
        mixed = self.spatial_mamba_mixer(sequence)[:, self.num_global_tokens:]
        residual = x * weights[:, :, None]
        residual[rows, selected] = mixed * kept_weights[:, :, None]
        return x + residual


class DynamicVisBackbone(nn.Module):
    """DynamicVis backbone; ``forward(x)`` returns NCHW feature maps (stage LayerNorm outputs) for out_indices.

    Args:
        arch: 'b'/'base' or 'l'/'large'.
        img_size: Input side in pixels (square), default 512; ``pos_embed`` is resized on load to fit it.
        path_type: Token path of the Mamba mixers: 'forward_reverse_mean' (default, released) or 'forward'.
        sampling_scale: Token-sampling scale, a number (fixed) or dict(type='fixed'|'decay', val=...).
        mamba2: Must be False (the Mamba2 variant is not implemented).
        out_indices: Stages (0..3) whose feature maps ``forward`` returns.
        patch_sizes: Patch-embedding kernel per stage (4 entries).
        strides: Patch-embedding stride per stage (4 entries).
        spatial_token_keep_ratios: Per stage, 1 in this many tokens goes through the mixer (4 entries).
        global_token_cfg: dict(pos='head', num=-1 (one per row) or a count).
        in_channels: Input channels, 3 (RGB).
        scan: Selective-scan backend, a name of ``models.scan.resolve_scan`` (default 'auto').

    Raises:
        NotImplementedError: mamba2=True, a path_type or global-token position the released checkpoints
            do not use.
        ValueError: An unknown path_type or arch, wrong-length stage lists, bad out_indices, an img_size too
            small for four stages, or an unknown scan.
        RuntimeError: A scan backend that cannot load here.
    """

    def __init__(self, arch: str = "b", img_size: int = 512, path_type: str = "forward_reverse_mean",
                 sampling_scale: float | Mapping | None = 0.1, mamba2: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3), patch_sizes: Sequence[int] = (7, 3, 3, 3),
                 strides: Sequence[int] = (4, 2, 2, 2), spatial_token_keep_ratios: Sequence[int] = (8, 4, 2, 1),
                 global_token_cfg: Mapping | None = None, in_channels: int = 3, scan: str = "auto"):
        super().__init__()
        if mamba2:
            raise NotImplementedError("mamba2=True (Mamba2Mixer variant) is not supported yet; the released "
                                      "DynamicVis checkpoints use mamba2=False")
        if path_type in UNSUPPORTED_PATH_TYPES:
            raise NotImplementedError(f"path_type {path_type!r} is not supported (it needs random shuffles or "
                                      f"gate weights absent from released checkpoints); use one of "
                                      f"{SUPPORTED_PATH_TYPES}")
        if path_type not in SUPPORTED_PATH_TYPES:
            raise ValueError(f"unknown path_type {path_type!r}; use one of {SUPPORTED_PATH_TYPES}")
        global_token_cfg = dict(global_token_cfg or {"pos": "head", "num": -1})
        if global_token_cfg.get("pos", "head") != "head":
            raise NotImplementedError(f"global_token_cfg pos={global_token_cfg.get('pos')!r} is not supported; "
                                      "only 'head' (the released configuration)")
        self.arch = canonical_arch(arch)
        spec = ARCHS[self.arch]
        if not all(len(s) == 4 for s in (patch_sizes, strides, spatial_token_keep_ratios)):
            raise ValueError("patch_sizes, strides and spatial_token_keep_ratios need one entry per stage (4)")
        if any(i not in range(4) for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} must be stage numbers in 0..3")
        self.img_size = int(img_size)
        self.in_channels = in_channels
        self.path_type = path_type
        self.sampling_scale = normalize_sampling_scale(sampling_scale)
        self.out_indices = tuple(out_indices)

        self.layers = nn.ModuleList()
        size, in_dims = self.img_size, in_channels
        for stage, (dims, depth) in enumerate(zip(spec.channels, spec.depths)):
            patch_embed = PatchEmbed(in_dims, dims, patch_sizes[stage], strides[stage])
            size = patch_embed.output_size(size)
            if size < 1:
                raise ValueError(f"img_size {img_size} is too small: stage {stage} would have no tokens")
            if stage == 0:
                self.pos_embed = nn.Parameter(torch.zeros(1, size * size, dims))
            num_global = size if global_token_cfg.get("num", -1) == -1 else int(global_token_cfg["num"])
            blocks = nn.ModuleList(
                SpatialSparseMixer(dims, spatial_token_keep_ratios[stage], num_global, path_type,
                                   self.sampling_scale) for _ in range(depth))
            self.layers.append(nn.ModuleList([patch_embed, blocks, nn.LayerNorm(dims, eps=1e-6)]))
            in_dims = dims
        self.channels = spec.channels
        self._register_load_state_dict_pre_hook(self._resize_pos_embed_hook)
        self.set_scan(scan)

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(self.channels[i] for i in self.out_indices)

    def set_scan(self, scan: str, device: torch.device | str | None = None) -> None:
        """Switch every Mamba mixer to another scan backend (see ``models.scan.resolve_scan``).

        ``'auto'`` without a device is resolved at the next forward for the input's device type (and again
        if the model moves to another device type), so a plainly built model gets the fastest backend,
        the fused CPU conv included. ``self.scan`` records the backend's name once it is known.
        """
        deferred = scan == "auto" and device is None
        name = scan if deferred or scan != "auto" else auto_scan_name(device)
        scan_fn = resolve_scan(name, device)          # deferred: a per-call dispatcher until the forward
        for module in self.modules():
            if isinstance(module, MambaMixer):
                module.scan_fn = scan_fn
        self.scan = name
        # None: resolve at the next forward; a device type: resolved for it; "": a fixed backend
        self._auto_scan_device_type = (None if deferred else
                                       torch.device(device).type if scan == "auto" else "")  # type: ignore[arg-type]

    def _resolve_auto_scan(self, device: torch.device) -> None:
        """The deferred ``'auto'``: pick the backend for this device type (once per type)."""
        pending = self._auto_scan_device_type
        if pending == "" or pending == device.type:
            return
        self.set_scan("auto", device)

    def _resize_pos_embed_hook(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "pos_embed"
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape:
            state_dict[key] = resize_pos_embed(state_dict[key], self.pos_embed.shape[1])

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"DynamicVisBackbone expects a torch.Tensor, got {type(x).__name__}")
        expected = (self.in_channels, self.img_size, self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DynamicVisBackbone(img_size={self.img_size}) expects input of shape "
                             f"(B, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}; resize "
                             f"(e.g. models.preprocess_s2_rgb) or build the backbone with another img_size")
        if not x.is_floating_point():
            raise TypeError(f"DynamicVisBackbone expects a floating-point input (normalised image), got {x.dtype}")

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Feature maps of a normalised image batch.

        Args:
            x: Float tensor (B, in_channels, img_size, img_size), ImageNet-normalised
                (``models.preprocess_s2_rgb``).

        Returns:
            One (B, C_i, H_i, W_i) tensor per stage in ``out_indices``; the last stage is 1/32 of img_size.

        Raises:
            TypeError: ``x`` not a floating-point tensor.
            ValueError: ``x`` not of shape (B, in_channels, img_size, img_size).
        """
        self._check_input(x)
        self._resolve_auto_scan(x.device)
        with keep_cpu_autocast_off(x.device):
            return self._forward(x.to(self.pos_embed.dtype))

    def _forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outs = []
        layers: Sequence[tuple[Any, Any, Any]] = self.layers  # type: ignore[assignment]  # ModuleList of triples
        for stage, (patch_embed, blocks, norm) in enumerate(layers):
            x, (h, w) = patch_embed(x)
            if stage == 0:
                x = x + self.pos_embed
            for block in blocks:
                x = block(x)
            # contiguous: a strided (channels-last) view here sends the next stage's Conv2d down another
            # oneDNN path at batch 1 than at batch >= 2, so a tile's vector would depend on its batch.
            x = norm(x).transpose(1, 2).reshape(x.shape[0], -1, h, w).contiguous()
            if stage in self.out_indices:
                outs.append(x)
        return tuple(outs)


def resize_pos_embed(pos_embed: Tensor, num_tokens: int) -> Tensor:
    """Bicubic resize of a square-grid (1, N, C) position embedding to (1, num_tokens, C)."""
    src, dst = math.isqrt(pos_embed.shape[1]), math.isqrt(num_tokens)
    if src * src != pos_embed.shape[1] or dst * dst != num_tokens or pos_embed.ndim != 3:
        raise ValueError(f"cannot resize pos_embed of shape {tuple(pos_embed.shape)} to {num_tokens} tokens: "
                         "both must be square grids")
    channels = pos_embed.shape[2]
    grid = pos_embed.reshape(1, src, src, channels).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)
