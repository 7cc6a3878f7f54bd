"""Federated split GANs (FSL-GAN): capacity-aware placement of a discriminator's parts on a
user's devices and the simulated clock. (The experiment that trains them is issue 17's.)"""
