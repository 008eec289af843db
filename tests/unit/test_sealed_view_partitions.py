"""The GPT and fstab readers of the sealed view: bounded, and hostile tables refused."""

from __future__ import annotations

import pytest

from harden.builder.disk_image import DiskImageError
from harden.builder.sealed_view import SECTOR, fstab_mounts, gpt_partitions

DISK = 64 << 20


def gpt(entries: list[tuple[int, int]], *, count: int = 128, size: int = 128) -> bytes:
    data = bytearray(SECTOR * 34)
    header = bytearray(92)
    header[:8] = b"EFI PART"
    header[72:80] = (2).to_bytes(8, "little")
    header[80:84] = count.to_bytes(4, "little")
    header[84:88] = size.to_bytes(4, "little")
    data[SECTOR : SECTOR + 92] = header
    for i, (first, last) in enumerate(entries):
        at = 2 * SECTOR + i * size
        data[at : at + 16] = b"\x01" * 16  # any type GUID that is not all zero
        data[at + 32 : at + 40] = first.to_bytes(8, "little")
        data[at + 40 : at + 48] = last.to_bytes(8, "little")
    return bytes(data)


def test_partitions_by_number_with_byte_offsets() -> None:
    table = gpt([(2048, 4095), (4096, 8191)])
    assert gpt_partitions(table, DISK) == {1: 2048 * SECTOR, 2: 4096 * SECTOR}
    assert gpt_partitions(bytes(SECTOR * 34), DISK) == {}  # no GPT: a whole-disk file system


@pytest.mark.parametrize(
    "table",
    [
        gpt([(2048, DISK // SECTOR)]),  # ends past the disk
        gpt([(0, 10)]),  # starts at sector 0
        gpt([(4096, 2048)]),  # ends before it starts
        gpt([], count=100_000),  # more entries than harden reads
        gpt([], size=16),  # entries too small to hold an entry
    ],
)
def test_hostile_tables_are_refused(table: bytes) -> None:
    with pytest.raises(DiskImageError):
        gpt_partitions(table, DISK)


def test_fstab_mounts_shallowest_first_and_problems_said() -> None:
    mounts, problems = fstab_mounts(
        "# comment\n"
        "/dev/vda1\t/\text4\trw\t0\t1\n"
        "/dev/vda5 /var/log ext4 rw 0 2\n"
        "/dev/vda3 /var ext4 rw,nodev 0 2\n"
        "tmpfs /dev/shm tmpfs rw 0 0\n"
        "UUID=1234 /home ext4 rw 0 2\n"
        "/dev/vda7 /../etc ext4 rw 0 2\n"
        "/dev/vda8 relative ext4 rw 0 2\n"
    )
    assert mounts == [("var", 3), ("var/log", 5)]
    assert len(problems) == 3
    assert any("UUID=1234" in p for p in problems)
