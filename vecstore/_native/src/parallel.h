// Work split across threads: the scans and the encoder share this one way of running it.
#pragma once

#include <cstddef>
#include <thread>
#include <vector>

namespace vecstore {

// Runs work(w) for w in [0, workers), the last on this thread, and waits for all.
template <typename Work>
void in_parallel(std::size_t workers, const Work& work) {
  std::vector<std::thread> pool;
  for (std::size_t w = 0; w + 1 < workers; ++w) pool.emplace_back([&work, w] { work(w); });
  work(workers - 1);
  for (auto& t : pool) t.join();
}

}  // namespace vecstore
