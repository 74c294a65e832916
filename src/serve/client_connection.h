#pragma once
// Whether the client of a request is still connected, for handlers that wait without writing (a
// non-streaming completion): a client that goes away cancels its sequences, as a stream's does when a
// write fails. cpp-httplib 0.11 (Debian 12's) gives a handler no access to its connection (later
// versions have Request::is_connection_closed), so the socket is found among this process's
// descriptors by the client's address and port, which identify the connection. The handler runs on
// the thread that owns that socket, so it stays open (and means the same connection) while it waits.
#include <string>
#include <utility>

namespace deltatune::serve {

class ClientConnection {
 public:
  // Cheap: the descriptors are scanned at the first gone(), so a request answered before its first
  // wait times out costs nothing here.
  ClientConnection(std::string remote_addr, int remote_port)
      : remote_addr_(std::move(remote_addr)), remote_port_(remote_port) {}
  // True once the client has closed or reset the connection. Never true when the socket was not found
  // or not told apart from another with the same client address and port: then a disconnect is
  // noticed only when the reply is written.
  bool gone();
  bool found();

 private:
  void find_socket();

  std::string remote_addr_;
  int remote_port_;
  bool searched_ = false;
  int fd_ = -1;
};

}  // namespace deltatune::serve
