#include "serve/client_connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <charconv>
#include <filesystem>

namespace deltatune::serve {
namespace {

// The numeric address and port of a connected socket's peer, as cpp-httplib writes remote_addr.
bool peer_of(int fd, std::string& host, int& port) {
  sockaddr_storage peer{};
  socklen_t length = sizeof peer;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length) != 0) return false;
  char text[INET6_ADDRSTRLEN] = {};
  if (peer.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&peer);
    if (!::inet_ntop(AF_INET, &a->sin_addr, text, sizeof text)) return false;
    port = ntohs(a->sin_port);
  } else if (peer.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&peer);
    if (!::inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text)) return false;
    port = ntohs(a->sin6_port);
  } else {
    return false;
  }
  host = text;
  return true;
}

}  // namespace

void ClientConnection::find_socket() {
  searched_ = true;
  std::error_code error;
  std::filesystem::directory_iterator entries("/proc/self/fd", error), end;
  // A descriptor list that cannot be read (or stops reading midway) means no watch, never an error:
  // the request itself is unaffected.
  for (; !error && entries != end; entries.increment(error)) {
    const std::string name = entries->path().filename().string();
    int fd = -1;
    if (std::from_chars(name.data(), name.data() + name.size(), fd).ec != std::errc()) continue;
    // getpeername alone (it fails on anything but a connected socket): the other descriptors belong to
    // other connections' threads, so this looks at none of them more than needed.
    std::string host;
    int port = -1;
    if (peer_of(fd, host, port) && port == remote_port_ && host == remote_addr_) {
      // Two at once: an earlier connection from the same client port (loopback reuses ports in
      // TIME_WAIT) whose handler still holds its socket, closed by the client. Which one is this
      // request's cannot be told apart, so none is watched rather than the wrong one.
      if (fd_ >= 0) {
        fd_ = -1;
        return;
      }
      fd_ = fd;
    }
  }
  if (error) fd_ = -1;
}

bool ClientConnection::found() {
  if (!searched_) find_socket();
  return fd_ >= 0;
}

bool ClientConnection::gone() {
  if (!found()) return false;
  pollfd p{.fd = fd_, .events = POLLRDHUP, .revents = 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

}  // namespace deltatune::serve
