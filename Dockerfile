# netguard's image: one static binary and nothing else. Build it with `cargo xtask image`,
# or: cargo xtask dist && docker build -t netguard .
# Run it in the host's namespaces with the capabilities it needs (see deploy/compose):
#   docker run -d --name netguard --cap-add SYS_ADMIN --cap-add NET_ADMIN \
#     --cap-add SYS_PTRACE --cap-add DAC_READ_SEARCH --security-opt apparmor=unconfined \
#     --pid host --network host --cgroupns host \
#     -v /sys/fs/cgroup:/sys/fs/cgroup -v /sys/fs/bpf:/sys/fs/bpf \
#     -v /var/run/docker.sock:/var/run/docker.sock:ro netguard
FROM scratch
# Set by BuildKit (docker buildx --platform linux/arm64); the classic builder uses amd64.
ARG TARGETARCH=amd64
COPY target/dist/netguard-${TARGETARCH} /netguard
LABEL org.opencontainers.image.title="netguard" \
      org.opencontainers.image.description="eBPF egress killswitch and traffic monitor for Docker hosts"
ENTRYPOINT ["/netguard"]
CMD ["run"]
