#!/usr/bin/env bash
# Fetch the CPU recipe's training photographs: only the PHOTOGRAPHS among four Debian wallpaper packages, each
# unpacked WITHOUT installing it (no root), into DEST/hr:
#   - plasma-workspace-wallpapers (KDE): 12 of its 30 wallpapers are photographs (the other 18 are smooth vector
#     artwork, which the bicubic base of the recipe's generator already reproduces: see docs/training.md);
#   - mate-backgrounds: its 12 nature photographs (nature/*.jpg, GPL-2+);
#   - lomiri-wallpapers-20.04: Kleiber_by_Lukas_Baubkus.jpg (a bird on tree bark; CC BY-SA);
#   - lomiri-wallpapers-16.04: 14 of its 15 (man-made things and texture: brushes, a bridge, a clock, a room, dogs at a
#     wooden window, a fig in a bowl; landscapes), CC BY / CC BY-SA / CC0; not umang (a smooth colour gradient).
# 39 photographs, 1280x1024 to 6K; licences in each package's /usr/share/doc/*/copyright. Nothing is installed and
# nothing lands in the repository.
#
#   scripts/fetch_photos.sh [DEST]        (default DEST: ../data/photos beside the repository, outside git)
#   scripts/fetch_photos.sh --version     the set's version, which it writes to DEST/.version
set -euo pipefail
version=2  # 1: the first 25 photographs (session 12); 2: 39
if [ "${1:-}" = --version ]; then echo "$version"; exit 0; fi

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
unpack lomiri-wallpapers-16.04

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
for name in aitzgorri_by_Aitzol_Berasategi analogpattern_by_Peter_Nerlich Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly \
    free_by_Peter_Nerlich friends_by_Aitzol_Berasategi greentock_by_Peter_Nerlich life_by_Aitzol_Berasategi \
    picosdeeuropa_by_Aitzol_Berasategi Picture_0B_by_freespace Picture_1A_by_freespace \
    seeding_by_Clements_Engelhardt sunset_by_Aitzol_Berasategi Wine_by_Jakkub_Mede; do
    keep "$work/root/usr/share/backgrounds/$name.jpg" "$name.jpg"
done
rm -rf "$work/root"
echo "$version" > "$dest/.version"  # scripts/train_cpu_recipe.sh refetches its default folder when this differs
echo "wrote $count photographs to $dest/hr"
