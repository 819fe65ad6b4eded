"""A1111's sampling, reimplemented: sigma schedules, noise, the CFG denoiser and every sampler it lists.

A1111 v1.10 drives crowsonkb's k-diffusion samplers (and its own DDIM/PLMS/UniPC/LCM) with its own sigma
schedules and its own noise. This package implements the same published algorithms (Karras et al. 2022,
DPM-Solver/DPM-Solver++, UniPC, Restart sampling, LCM) so that the same checkpoint, seed and request give
A1111's pixels; the modules say which algorithm each function follows.
"""
