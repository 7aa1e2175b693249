"""Codecs of one's own for the tests of ``--model package.module:factory``.

``TinyCodec`` downsamples by 4 (two stride-2 convolutions) and declares no
``downsampling_factor``, so its padding multiple has to be found by the probe.
"""

# isort: off
import moopt_lic  # noqa: F401  (first: it filters CompressAI's import-time deprecation warning)

# isort: on
import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv


class TinyCodec(CompressionModel):
    """A factorized-prior codec with a stride of 4."""

    def __init__(self, N: int = 8, M: int = 8) -> None:
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(M)
        self.g_a = torch.nn.Sequential(conv(3, N), GDN(N), conv(N, M))
        self.g_s = torch.nn.Sequential(deconv(M, N), GDN(N, inverse=True), deconv(N, 3))

    def forward(self, x):
        y = self.g_a(x)
        y_hat, likelihoods = self.entropy_bottleneck(y)
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": likelihoods}}

    def compress(self, x):
        y = self.g_a(x)
        return {"strings": [self.entropy_bottleneck.compress(y)], "shape": y.size()[-2:]}

    def decompress(self, strings, shape):
        y_hat = self.entropy_bottleneck.decompress(strings[0], shape)
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}


def tiny(N=8, M=8):
    return TinyCodec(N, M)


def declared(N=8, M=8):
    model = TinyCodec(N, M)
    model.downsampling_factor = 4
    return model


def wrong_factor(N=8, M=8):
    model = TinyCodec(N, M)
    model.downsampling_factor = 3
    return model


def not_a_codec(N=8, M=8):
    return torch.nn.Conv2d(3, 3, 1)


def broken(N=8, M=8):
    raise RuntimeError("out of coffee")


def no_arguments():
    return TinyCodec()


NOT_CALLABLE = 3
