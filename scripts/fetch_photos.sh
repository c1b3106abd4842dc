#!/usr/bin/env bash
# Fetch the CPU recipe's training photographs: only the PHOTOGRAPHS among three Debian wallpaper packages, each
# unpacked WITHOUT installing it (no root), into DEST/hr:
#   - plasma-workspace-wallpapers (KDE): 12 of its 30 wallpapers are photographs (the other 18 are smooth vector
#     artwork, which the bicubic base of the recipe's generator already reproduces: see docs/training.md);
#   - mate-backgrounds: its 12 nature photographs (nature/*.jpg, GPL-2+);
#   - lomiri-wallpapers-20.04: Kleiber_by_Lukas_Baubkus.jpg (a bird on tree bark; CC BY-SA).
# 25 photographs, 1280x1024 to 5K; licences in each package's /usr/share/doc/*/copyright. Nothing is installed and
# nothing lands in the repository.
#
#   scripts/fetch_photos.sh [DEST]        (default DEST: ../data/photos beside the repository, outside git)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$here/../data/photos}"
mkdir -p "$dest/hr"
dest="$(cd "$dest" && pwd)"
work="$dest/.deb"
mkdir -p "$work"
cd "$work"

unpack() {  # unpack PACKAGE into $work/root (downloaded once)
    ls "$1"_*.deb >/dev/null 2>&1 || apt-get download "$1"
    dpkg-deb -x "$(ls "$1"_*.deb | head -n 1)" "$work/root"
}
rm -rf "$work/root"
unpack plasma-workspace-wallpapers
unpack mate-backgrounds
unpack lomiri-wallpapers-20.04

count=0
keep() {  # keep SRC as DEST/hr/NAME
    cp "$1" "$dest/hr/$2"
    count=$((count + 1))
}
kde="$work/root/usr/share/wallpapers"
for name in Autumn BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut \
    Path summer_1am; do
    images="$kde/$name/contents/images"
    best="$(ls -S "$images" | head -n 1)"  # largest file = highest resolution (one image per screen size)
    keep "$images/$best" "$name.${best##*.}"
done
for path in "$work"/root/usr/share/backgrounds/mate/nature/*.jpg; do
    keep "$path" "$(basename "$path")"
done
keep "$work/root/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg" Kleiber.jpg
rm -rf "$work/root"
echo "wrote $count photographs to $dest/hr"
