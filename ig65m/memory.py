"""Refusing, up front, a run whose tensors cannot fit in this machine's memory.

The estimates are lower bounds (the decoded frames and float input of the clips held at once, not
the network's activations), compared with the physical memory: a run refused here could never
finish, and one that passes may still need more.
"""

import os

from ig65m.errors import Ig65mError


def physical_memory():
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def clip_bytes(clip_frames, crop_size, frame_size=None, channels=3):
    """One clip in memory: its decoded RGB frames (uint8, square at least) and its float input."""
    decoded = clip_frames * (frame_size or crop_size) ** 2 * 3
    return decoded + 4 * channels * clip_frames * crop_size ** 2


def check_fits(clips, clip_frames, crop_size, frame_size=None, *, what):
    """Ig65mError when `clips` clips held at once cannot fit in memory. `what` names the options
    that set them, for the message."""
    needed = clips * clip_bytes(clip_frames, crop_size, frame_size)
    total = physical_memory()
    if needed > total:
        raise Ig65mError(f"{what} need at least {_gib(needed)} of memory for {clips} clip(s) of "
                         f"{clip_frames} x {crop_size} x {crop_size}, more than this machine's "
                         f"{_gib(total)}: lower them")


def _gib(count):
    return f"{count / 2**30:.1f} GiB" if count < 2**50 else f"{count / 2**50:.3g} PiB"
