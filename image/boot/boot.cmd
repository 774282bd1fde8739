# provbox boot script, run by U-Boot from the boot partition (scripts/build-image compiles
# it to boot.scr with mkimage). It never changes with updates: it chooses a root slot and
# boots that slot's own kernel, initramfs and command line (/boot in the slot).
#
# The A/B state is /perm/boot/state on partition 6 (ext4), written by Linux only:
# `active=a`, and after an install `next=b` with `attempt=<8 hex digits>`, new for each
# install. A `next` slot is tried once: before booting it, this script writes the attempt
# to one raw sector in the gap before the first partition (LBA 2048); finding it there
# again means the try failed (the board came back without provbox committing the slot),
# and the active slot boots with provbox.rolled_back=<slot>. One sector write is all this
# script ever writes, and nothing else shares that sector.
#
# Partitions: 2 is root A, 3 is root B. ${devtype} and ${devnum} are U-Boot's (the disk
# this script was found on).

setenv pb_scratch ${pxefile_addr_r}
setenv active a
setenv next
setenv attempt
if load ${devtype} ${devnum}:6 ${pb_scratch} boot/state; then
    env import -t ${pb_scratch} ${filesize} active next attempt
fi
if test "${active}" != b; then setenv active a; fi

# One command line addition per site, optional: `bootargs_local=...` in local.env on the
# boot partition.
setenv bootargs_local
if load ${devtype} ${devnum}:1 ${pb_scratch} local.env; then
    env import -t ${pb_scratch} ${filesize} bootargs_local
fi

setenv pb_slot ${active}
setenv pb_trial 0
setenv pb_rolled_back
if test -n "${next}" && test "${next}" != "${active}" && test -n "${attempt}"; then
    ${devtype} read ${pb_scratch} 0x800 1
    setexpr.l pb_tried *${pb_scratch}
    if itest ${pb_tried} == ${attempt}; then
        echo "provbox: slot ${next} was tried and not committed: booting slot ${active}"
        setenv pb_rolled_back ${next}
    else
        mw.l ${pb_scratch} ${attempt}
        if ${devtype} write ${pb_scratch} 0x800 1; then
            setenv pb_slot ${next}
            setenv pb_trial 1
        else
            echo "provbox: cannot record the try of slot ${next}: booting slot ${active}"
        fi
    fi
fi

# Boots ${pb_slot}; returns only if that slot cannot be loaded or started. The device tree
# is the one U-Boot was handed: on the Pi the firmware's (${fdt_addr}), which it adapted to
# the board it runs on (memory, MAC address, the SoC stepping's DMA ranges); on virt QEMU's.
setenv pb_boot 'if test ${pb_slot} = b; then setenv pb_part 3; else setenv pb_part 2; fi; echo "provbox: loading root slot ${pb_slot} (partition ${pb_part})"; setenv bootargs; setenv pb_fdt ${fdtcontroladdr}; if test -n "${fdt_addr}"; then setenv pb_fdt ${fdt_addr}; fi; if load ${devtype} ${devnum}:${pb_part} ${pb_scratch} /boot/bootargs.env; then env import -t ${pb_scratch} ${filesize} bootargs; fi; if test -n "${bootargs}"; then if load ${devtype} ${devnum}:${pb_part} ${kernel_addr_r} /boot/vmlinuz; then if load ${devtype} ${devnum}:${pb_part} ${ramdisk_addr_r} /boot/initrd.img; then setenv bootargs "${bootargs} provbox.slot=${pb_slot} provbox.try=${pb_trial} provbox.rolled_back=${pb_rolled_back} ${bootargs_local}"; booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${pb_fdt}; fi; fi; fi; echo "provbox: root slot ${pb_slot} does not boot"'

run pb_boot
# A slot on its try that does not even start has failed: back to the active one.
if test ${pb_trial} = 1; then
    setenv pb_rolled_back ${pb_slot}
    setenv pb_slot ${active}
    setenv pb_trial 0
    run pb_boot
fi
# The last chance: the other slot.
setenv pb_rolled_back ${pb_slot}
if test ${pb_slot} = a; then setenv pb_slot b; else setenv pb_slot a; fi
run pb_boot
echo "provbox: neither root slot boots; resetting in 10 s"
sleep 10
reset
