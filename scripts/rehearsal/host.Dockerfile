# The root filesystem of every `campfleet rehearse` host (the mux and each ship): what the
# official Debian 12 AMI carries that the user data relies on (systemd as PID 1, cloud-init,
# awscli, amazon-ec2-utils, python3, iptables, e2fsprogs, udev, curl, ca-certificates), on the
# debootstrapped Debian bookworm of scripts/build-bases.sh (which trusts this machine's CA).
# Built by scripts/build-rehearsal-host.sh; the hooks below are named in docs/rehearsal.md.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN printf '%s\n' \
      'deb http://deb.debian.org/debian bookworm main' \
      'deb http://deb.debian.org/debian bookworm-updates main' \
      'deb http://deb.debian.org/debian-security bookworm-security main' \
      >/etc/apt/sources.list \
 && rm -f /etc/apt/sources.list.d/* \
 && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      systemd systemd-sysv dbus udev cloud-init awscli amazon-ec2-utils python3 iptables \
      e2fsprogs ca-certificates curl iproute2 procps kmod gnupg util-linux mount locales \
      >/dev/null \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
# Hook "machine CA": the base already trusts this machine's CA bundle; keep it trusted when a
# package later runs update-ca-certificates.
RUN cp /etc/ssl/certs/ca-certificates.crt /usr/local/share/ca-certificates/campfleet-machine.crt
# As on Debian's cloud images: the locale cloud-init sets (en_US.UTF-8) is generated.
RUN sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen && locale-gen >/dev/null
# Hook "NoCloud only": cloud-init reads the seed the rehearsal mounts at
# /var/lib/cloud/seed/nocloud and leaves the network to Docker (a container has no NIC to
# configure). Every module of the user data runs as on EC2.
RUN printf '%s\n' '# campfleet rehearsal hook "NoCloud only" (docs/rehearsal.md)' \
      'datasource_list: [NoCloud, None]' 'network: {config: disabled}' \
      >/etc/cloud/cloud.cfg.d/90-campfleet-rehearsal.cfg \
 # No terminals to hand out in a container; the console is the container's log.
 && systemctl mask getty@tty1.service serial-getty@ttyS0.service console-getty.service \
      systemd-udev-trigger.service systemd-firstboot.service \
 # A fresh machine id per host at first boot, as on a new instance.
 && : >/etc/machine-id && rm -f /var/lib/dbus/machine-id



# Hook "nested cgroups": the nested Docker engine (docker.io, installed by the user data) puts
# its containers beneath its own cgroup, not at the root of the machine's hierarchy.
RUN mkdir -p /etc/docker && printf '{"cgroup-parent": "campfleet-nested"}\n' >/etc/docker/daemon.json
ENV container=docker
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
