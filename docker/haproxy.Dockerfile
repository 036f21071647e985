# HAProxy from Debian's own package (2.6 on bookworm: the version the tests run), in front of the
# qvl replicas' HTTP ports. The config is mounted from docker/haproxy.cfg (see docker-compose.yml).
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*

USER haproxy
EXPOSE 8080
ENTRYPOINT ["haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
