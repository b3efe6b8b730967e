# Multi-stage build of the veer agent image.
# Stage 1 builds the eBPF object (nightly + bpf-linker on LLVM 22) and the agent; stage 2 is a
# minimal runtime with only the static-ish binary and the tools operators use from it.
FROM rust:1.95-bookworm AS build
RUN echo "deb http://apt.llvm.org/bookworm/ llvm-toolchain-bookworm-22 main" > /etc/apt/sources.list.d/llvm.list \
 && curl -fsSL https://apt.llvm.org/llvm-snapshot.gpg.key > /etc/apt/trusted.gpg.d/llvm.asc \
 && apt-get update \
 && apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev \
 && LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked --no-default-features --features llvm-22
WORKDIR /src
# The pinned eBPF nightly (the one `cargo xtask setup` installs), read from its one place.
COPY ebpf/rust-toolchain.toml ebpf/rust-toolchain.toml
RUN rustup toolchain install "$(sed -n 's/^channel = "\(.*\)"/\1/p' ebpf/rust-toolchain.toml)" \
      --profile minimal --component rust-src
COPY . .
RUN cargo xtask build --release

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 bpftool ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/veer /usr/local/bin/veer
ENTRYPOINT ["/usr/local/bin/veer"]
