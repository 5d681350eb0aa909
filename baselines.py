"""The paper's baselines, trained and saved exactly the way cebm.py trains and saves a CEBM.

    python baselines.py --model vae    --dataset mnist --preset cpu   # spherical Gaussian prior
    python baselines.py --model gmmvae --dataset mnist --preset cpu   # mixture-of-Gaussians prior
    python baselines.py --model igebm  --dataset mnist --preset cpu   # Du & Mordatch (2019), PCD + SGLD
    python baselines.py --model bigan  --dataset mnist --preset cpu   # Donahue et al. (2017), poster only

Data, the encoder trunk (Appendix C), the SGLD sampler and replay buffer, the PCD step, the training
loop (metrics log, grids, atomic checkpoints, --resume, divergence stop) and the CLI come from cebm.py.
Every model exposes latent(x); energy models expose energy(x); the VAEs expose log_px(x, k).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import cebm

MODELS = ("vae", "gmmvae", "igebm", "bigan")


def baseline_parser():
    p = cebm.build_parser(__doc__, benchmark=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, choices=MODELS, help="which baseline to train")
    g.add_argument("--latent-dim", type=int, default=128, help="dimension of z (VAE, GMM-VAE, BiGAN)")
    g.add_argument("--components", type=int, default=50, help="mixture components of the GMM-VAE prior")
    g.add_argument("--act", default="silu", choices=["silu", "leakyrelu"],
                   help="activation of the shared conv trunk (the same choice as cebm.py's --act)")
    g.add_argument("--gan-lr", type=float, default=2e-4, help="BiGAN Adam learning rate (betas 0.5, 0.999)")
    return p


# --------------------------------------------------------------------------------------------------
# VAE and GMM-VAE (Appendix B, C Table 3)
# --------------------------------------------------------------------------------------------------

class Decoder(nn.Module):
    """z -> image logits: FC 128, FC to a small map, transposed convs (Appendix C, Table 3).

    Table 3 as printed ends the 32x32 decoder at 31x31 with one channel; we add output_padding=1
    to its third layer and output the image's channels. batchnorm=True (the BiGAN generator) puts
    BatchNorm after every hidden layer, as DCGAN/BiGAN generators do.
    """

    def __init__(self, channels, image_size, latent_dim, batchnorm=False):
        super().__init__()
        if image_size == 28:
            self.shape = (32, 3, 3)
            convs = [nn.ConvTranspose2d(32, 32, 4, 2, 1),                                # 3 -> 6
                     nn.ConvTranspose2d(32, 64, 4, 2, 1),                                # 6 -> 12
                     nn.ConvTranspose2d(64, 64, 4, 2, 0)]                                # 12 -> 26
            last = nn.ConvTranspose2d(64, channels, 3, 1, 0)                             # 26 -> 28
        else:
            self.shape = (512, 4, 4)
            convs = [nn.ConvTranspose2d(512, 32, 4, 2, 1),                               # 4 -> 8
                     nn.ConvTranspose2d(32, 64, 4, 2, 1),                                # 8 -> 16
                     nn.ConvTranspose2d(64, 64, 3, 2, 1, output_padding=1)]              # 16 -> 32
            last = nn.ConvTranspose2d(64, channels, 3, 1, 1)                             # 32 -> 32
        fc = [nn.Linear(latent_dim, 128), nn.Linear(128, math.prod(self.shape))]

        def hidden(layers, norm, act):
            out = []
            for layer in layers:
                width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
                out += [layer, norm(width), act()] if batchnorm else [layer, act()]
            return out
        self.fc = nn.Sequential(*hidden(fc, nn.BatchNorm1d, nn.ReLU))
        self.up = nn.Sequential(*hidden(convs, nn.BatchNorm2d, lambda: nn.LeakyReLU(0.2)), last)

    def forward(self, z):
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, *self.shape)
        # Channels-last: on a CPU, oneDNN then runs the transposed convs (1.6x faster here than the
        # default layout, which matters for the VAE's k-sample log p(x) in evaluate.py).
        out = self.up(h.contiguous(memory_format=torch.channels_last))
        return out.view(*lead, *out.shape[1:])


def to_unit(x):
    """[-1, 1] model range -> [0, 1], the Bernoulli decoder's target (clamped: data noise can leave it)."""
    return ((x + 1) / 2).clamp(0, 1)


class VAE(nn.Module):
    """Encoder q(z|x) = N(μ(x), σ²(x)) on the CEBM trunk, prior N(0, I), Bernoulli decoder on [0, 1]
    pixels (the official code's choice). Trained on the ELBO (Eq. 13) with one reparameterised sample."""

    def __init__(self, channels, image_size, latent_dim=128, act="silu"):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = cebm.Encoder(channels, image_size, 2 * latent_dim, act)
        self.decoder = Decoder(channels, image_size, latent_dim)

    def posterior(self, x):
        mean, log_var = self.encoder(x).chunk(2, dim=-1)
        return mean, log_var.clamp(-12, 8)

    def log_prior(self, z):
        """log N(z; 0, I), summed over dimensions."""
        return -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(-1)

    def log_likelihood(self, x, z):
        """log p(x | z): Bernoulli with logits decoder(z) on [0, 1]-scaled pixels."""
        logits = self.decoder(z)
        target = to_unit(x).expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(-3).sum(-1)

    def _sample_q(self, x, k):
        mean, log_var = self.posterior(x)
        std = (0.5 * log_var).exp()
        z = mean + std * torch.randn(k, *mean.shape, device=x.device)   # [k, B, K]
        log_q = (-0.5 * ((z - mean) / std) ** 2 - 0.5 * log_var - 0.5 * math.log(2 * math.pi)).sum(-1)
        return z, log_q

    def log_weights(self, x, k):
        """log p(x, z_i) - log q(z_i | x) for k samples z_i ~ q(z | x): [k, B]."""
        z, log_q = self._sample_q(x, k)
        return self.log_likelihood(x, z) + self.log_prior(z) - log_q

    def elbo(self, x):
        """Single-sample ELBO (Eq. 13), per image."""
        return self.log_weights(x, 1)[0]

    def log_px(self, x, k=100):
        """Importance-sampled log p(x) ≈ log (1/k) Σ_i p(x, z_i) / q(z_i | x); a lower bound that
        tightens as k grows (Burda et al. 2016)."""
        return torch.logsumexp(self.log_weights(x, k), dim=0) - math.log(k)

    def latent(self, x):
        """The encoder mean, as in the paper."""
        return self.posterior(x)[0]

    def generate(self, n, device):
        z = self.sample_prior(n, device)
        return torch.sigmoid(self.decoder(z)) * 2 - 1

    def sample_prior(self, n, device):
        return torch.randn(n, self.latent_dim, device=device)


class GMMVAE(VAE):
    """The VAE with a learnable mixture-of-Gaussians prior, L components, uniform weights."""

    def __init__(self, channels, image_size, latent_dim=128, components=50, act="silu"):
        super().__init__(channels, image_size, latent_dim, act)
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.log_stds = nn.Parameter(torch.zeros(components, latent_dim))

    def log_prior(self, z):
        """log Σ_l (1/L) N(z; μ_l, σ_l²): [..., K] -> [...]."""
        z = z.unsqueeze(-2)  # [..., 1, K] against [L, K]
        log_n = (-0.5 * ((z - self.means) / self.log_stds.exp()) ** 2 - self.log_stds
                 - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(log_n, dim=-1) - math.log(len(self.means))

    def sample_prior(self, n, device):
        y = torch.randint(len(self.means), (n,), device=device)
        return self.means[y] + self.log_stds[y].exp() * torch.randn(n, self.latent_dim, device=device)


def vae_step(model, optimizer):
    def step(x, it=0):  # no schedule inside the step: the iteration is not used
        elbo = model.elbo(x)
        loss = -elbo.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            recon = torch.sigmoid(model.decoder(model.latent(x[:32]))) * 2 - 1
        shown = torch.stack([x[:32], recon], 1).flatten(0, 1)  # data / reconstruction pairs
        return {"elbo": elbo.mean().detach()}, shown
    return step


# --------------------------------------------------------------------------------------------------
# IGEBM (Du & Mordatch 2019; Appendix C Table 4): the CEBM trunk, FC 128, FC 1
# --------------------------------------------------------------------------------------------------

class IGEBM(nn.Module):
    """E(x) = FC1(act(FC128(act(FC128(conv(x)))))). Its latent is the last hidden layer, i.e. the
    network with the energy output removed (Section 5.2)."""

    def __init__(self, channels, image_size, act="silu"):
        super().__init__()
        self.encoder = cebm.Encoder(channels, image_size, 128, act)
        self.act = cebm.activation(act)
        self.head = nn.Linear(128, 1)

    def latent(self, x):
        return self.act(self.encoder(x))

    def energy(self, x):
        return self.head(self.latent(x)).squeeze(-1)


# --------------------------------------------------------------------------------------------------
# BiGAN (Donahue et al. 2017; the poster's few-shot table)
# --------------------------------------------------------------------------------------------------

class BiGAN(nn.Module):
    """Encoder E: x -> z (the CEBM trunk), generator G: z -> x (the VAE decoder, tanh output),
    discriminator D(x, z) on the pair (the conv trunk for x, an MLP for z, an MLP on both)."""

    def __init__(self, channels, image_size, latent_dim=128, act="silu"):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = cebm.Encoder(channels, image_size, latent_dim, act)
        # BatchNorm in G and dropout in D's z and joint layers (Donahue et al., 2017): without them
        # D wins within 100 CPU-preset iterations and G saturates at tanh = -1 (all-black samples).
        self.generator = Decoder(channels, image_size, latent_dim, batchnorm=True)
        self.disc_x = cebm.Encoder(channels, image_size, 256, "leakyrelu")
        self.disc_z = nn.Sequential(nn.Linear(latent_dim, 256), nn.LeakyReLU(0.2), nn.Dropout(0.2))
        self.disc_xz = nn.Sequential(nn.LeakyReLU(0.2), nn.Dropout(0.2), nn.Linear(512, 256),
                                     nn.LeakyReLU(0.2), nn.Dropout(0.2), nn.Linear(256, 1))

    def discriminate(self, x, z):
        """Logit of P(pair came from (x, E(x)) rather than (G(z), z))."""
        return self.disc_xz(torch.cat([self.disc_x(x), self.disc_z(z)], -1)).squeeze(-1)

    def generate(self, n, device):
        return torch.tanh(self.generator(torch.randn(n, self.latent_dim, device=device)))

    def latent(self, x):
        return self.encoder(x)


def gan_loss(logit_real, logit_fake):
    """Cross-entropy for 'real pairs are 1, generated pairs are 0'; swap the arguments to fool D."""
    return (F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
            + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake)))


def bigan_step(model, opt_d, opt_ge):
    """The standard BiGAN game with the non-saturating generator/encoder loss."""
    disc_params = [p for n, p in model.named_parameters() if n.startswith("disc")]

    def step(x, it=0):  # no schedule inside the step: the iteration is not used
        z = torch.randn(len(x), model.latent_dim, device=x.device)
        x_fake = torch.tanh(model.generator(z))
        z_real = model.encoder(x)
        # Discriminator: real pairs (x, E(x)) -> 1, generated pairs (G(z), z) -> 0.
        loss_d = gan_loss(model.discriminate(x, z_real.detach()), model.discriminate(x_fake.detach(), z))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # Generator and encoder: fool the discriminator (labels swapped); D's weights stay fixed.
        for p in disc_params:
            p.requires_grad_(False)
        loss_ge = gan_loss(model.discriminate(x_fake, z), model.discriminate(x, z_real))
        opt_ge.zero_grad(set_to_none=True)
        loss_ge.backward()
        opt_ge.step()
        for p in disc_params:
            p.requires_grad_(True)
        return {"loss_d": loss_d.detach(), "loss_ge": loss_ge.detach()}, x_fake.detach()
    return step


# --------------------------------------------------------------------------------------------------
# Building, loading, training
# --------------------------------------------------------------------------------------------------

def build_model(cfg):
    """The baseline a config describes (argparse.Namespace or the dict saved in a checkpoint)."""
    c = vars(cfg) if not isinstance(cfg, dict) else cfg
    channels, size, _ = cebm.DATASETS[c["dataset"]]
    if c["model"] == "vae":
        return VAE(channels, size, c["latent_dim"], c["act"])
    if c["model"] == "gmmvae":
        return GMMVAE(channels, size, c["latent_dim"], c["components"], c["act"])
    if c["model"] == "igebm":
        return IGEBM(channels, size, c["act"])
    if c["model"] == "bigan":
        return BiGAN(channels, size, c["latent_dim"], c["act"])
    raise cebm.CEBMError(f"unknown baseline '{c['model']}'; choose one of {', '.join(MODELS)}")


def load_model(path, device="cpu"):
    """(model in eval mode, config) from a run folder or ckpt.pt written by baselines.py."""
    ckpt = cebm.load_checkpoint(path)
    model = build_model(ckpt["config"])
    cebm.load_weights(model, cebm.delivered_weights(ckpt), path)
    return model.to(device).eval(), ckpt["config"]


def run_baseline(cfg):
    if cfg.keep_heap:
        cebm.keep_freed_memory()
    torch.manual_seed(cfg.seed)
    if cfg.sample:  # the IGEBM, an energy model, samples like a CEBM
        cebm.write_samples(cfg, *load_model(cfg.out_dir, cfg.device))
        return
    device = torch.device(cfg.device)
    channels, size, _ = cebm.DATASETS[cfg.dataset]
    model = build_model(cfg).to(device, memory_format=cebm.memory_format(cfg))
    buffer = None
    if cfg.model == "igebm":  # exactly the PCD/SGLD loop of cebm.py
        opt = cebm.make_adam(cfg, model.parameters())
        buffer = cebm.ReplayBuffer(cfg.buffer_size, (channels, size, size), device, cfg.reinit)
        step = cebm.pcd_step(cfg, model, opt, buffer, cebm.make_sampler(cfg, model))
        optimizers = {"adam": opt}
    elif cfg.model == "bigan":
        disc = [p for n, p in model.named_parameters() if n.startswith("disc")]
        gen_enc = [p for n, p in model.named_parameters() if not n.startswith("disc")]
        opt_d = torch.optim.Adam(disc, lr=cfg.gan_lr, betas=(0.5, 0.999))
        opt_ge = torch.optim.Adam(gen_enc, lr=cfg.gan_lr, betas=(0.5, 0.999))
        step = bigan_step(model, opt_d, opt_ge)
        optimizers = {"disc": opt_d, "gen_enc": opt_ge}
    else:
        opt = cebm.make_adam(cfg, model.parameters())
        step = vae_step(model, opt)
        optimizers = {"adam": opt}
    cebm.train(cfg, model, step, optimizers, buffer)


def main(argv=None):
    parser = baseline_parser()
    parser.set_defaults(bias=None)  # parse_args names a run after --bias when --model is absent
    known, _ = parser.parse_known_args(argv)
    cebm.main(argv, parser, run_baseline, model_name=known.model)


if __name__ == "__main__":
    main()
