// Boost.Interprocess as a peer for `benches/locks.rs` and `benches/heap.rs`.
//
// Each subcommand mirrors one Rust workload: the same counts, the same
// process structure (fork()ed children where the Rust bench forks), the same
// kind of shared mapping and the same timing boundaries. One run per call;
// the Rust bench calls a subcommand as many times as it runs its own
// workload. Every result is one line `name value unit` on stdout.
//
//   lock_uncontended N   ns per lock + unlock of an interprocess_mutex
//   lock_write_unlock N  ns per lock, one write of the counter, unlock
//   lock_contended TOTAL [CPUS]
//                        2 forked processes count to TOTAL under the mutex;
//                        CPUS = 2 (default) pins them to different CPUs, 1
//                        to the same one
//   pingpong N [CPUS]    2 forked processes pass a turn N times through
//                        interprocess_mutex + interprocess_condition
//   contended_many TOTAL PROCS
//                        PROCS unpinned forked processes each add
//                        TOTAL / PROCS to the counter, one at a time
//   blocked_wakeups MS   context switches per second of a process blocked
//                        in lock() for MS ms on a mutex a live process holds
//   alloc_small N        N x allocate + deallocate 64 B, managed_shared_memory
//   alloc_batch N        N blocks of 16..1024 B, freed in a shuffled order
//   alloc_contended N    2 forked processes x N allocate + deallocate 64 B
//
// Shared memory objects are named /shmutils-test-bench-boost-<pid>-<cmd>
// and removed on every exit path: normal return, an exception, a failed
// child, and SIGINT / SIGTERM / SIGHUP. Forked children never remove them
// (they leave with _exit) and are killed and reaped if the parent fails.
//
// Built by benches/peers/boost.rs: g++ -O2 -std=c++17 -pthread.

#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <boost/interprocess/sync/interprocess_condition.hpp>
#include <boost/interprocess/sync/interprocess_mutex.hpp>
#include <boost/interprocess/sync/scoped_lock.hpp>

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace bip = boost::interprocess;
using Clock = std::chrono::steady_clock;

namespace {

// ---- names and cleanup ---------------------------------------------------

// The one shared memory name of this run (with its leading '/', as
// shm_unlink wants it), for the signal handler: no allocation there.
char g_name[128];

extern "C" void on_signal(int sig) {
    if (g_name[0] != '\0') {
        shm_unlink(g_name);  // async-signal-safe
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

// Removes the shared memory object when the run ends, however it ends.
// Created BEFORE the object, so a failure half-way through creation (after
// shm_open, before the segment is usable) removes it too; the name carries
// our pid, so nobody else can own it.
struct Remover {
    std::string name;  // without the leading '/': Boost adds it
    explicit Remover(const char* cmd) {
        name = "shmutils-test-bench-boost-" + std::to_string(getpid()) + "-" + cmd;
        std::snprintf(g_name, sizeof g_name, "/%s", name.c_str());
        struct sigaction sa;
        std::memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
    }
    ~Remover() {
        bip::shared_memory_object::remove(name.c_str());
        g_name[0] = '\0';
    }
    Remover(const Remover&) = delete;
    Remover& operator=(const Remover&) = delete;
};

// Forked children; any not yet reaped when this goes out of scope (the
// parent failed) are killed and reaped, so none spins forever.
struct Children {
    std::vector<pid_t> pids;
    ~Children() {
        for (pid_t pid : pids) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
    }
    // Reaps every child; throws as soon as one did not exit with status 0
    // (the destructor then kills the others: a partner that died would
    // leave them waiting forever).
    void wait_all() {
        while (!pids.empty()) {
            int status = 0;
            pid_t pid = waitpid(-1, &status, 0);
            if (pid < 0) {
                if (errno == EINTR) continue;
                throw std::runtime_error("waitpid failed");
            }
            auto it = std::find(pids.begin(), pids.end(), pid);
            if (it == pids.end()) continue;
            pids.erase(it);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                throw std::runtime_error("a benchmark child failed");
            }
        }
    }
};

// Forks a child that runs `work` (returning its exit status) and leaves with
// _exit: it never returns into the parent's code, never runs the parent's
// destructors (so never removes the name), and turns an exception into
// status 1. A child whose parent dies (a signal) is killed with it.
template <class F>
void spawn(Children& children, F work) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(1);
        int code = 1;
        try {
            code = work();
        } catch (...) {
            code = 1;
        }
        _exit(code);
    }
    children.pids.push_back(pid);
}

// ---- helpers mirroring the Rust benches ------------------------------------

double ns_per(Clock::duration d, uint64_t n) {
    return std::chrono::duration<double, std::nano>(d).count() / double(n);
}

double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// std::thread::available_parallelism: the CPUs this process may run on.
int cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

// The index-th CPU this process may run on (wrapping around).
int allowed_cpu(int index) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    int n = cpus();
    for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &set) && seen++ == index % n) return cpu;
    }
    return 0;
}

// Context switches (voluntary + involuntary) of a process so far, from
// /proc/PID/status.
uint64_t context_switches(pid_t pid) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/status", int(pid));
    FILE* f = std::fopen(path, "r");
    if (!f) throw std::runtime_error("cannot read /proc/PID/status");
    char line[256];
    uint64_t total = 0;
    while (std::fgets(line, sizeof line, f)) {
        unsigned long long v = 0;
        if (std::sscanf(line, "voluntary_ctxt_switches: %llu", &v) == 1 ||
            std::sscanf(line, "nonvoluntary_ctxt_switches: %llu", &v) == 1) {
            total += v;
        }
    }
    std::fclose(f);
    return total;
}

void pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

uint64_t xorshift(uint64_t& state) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

// Keeps the compiler from merging or dropping loop iterations (the Rust
// benches use std::hint::black_box for the same purpose).
template <class T>
inline void black_box(T* p) {
    asm volatile("" : : "r"(p) : "memory");
}

// ---- locks: a 4096-byte named segment, MAP_SHARED, like locks.rs ----------

// Offsets in the segment, as in locks.rs: each object on its own lines.
constexpr size_t START = 0;  // std::atomic<uint32_t> start flag
constexpr size_t OBJ = 256;  // interprocess_mutex, then the u64 counter
constexpr size_t CV = 512;   // interprocess_condition

struct LockSegment {
    Remover remover;
    bip::shared_memory_object shm;
    bip::mapped_region region;
    char* base;
    std::atomic<uint32_t>* start;
    bip::interprocess_mutex* mutex;
    uint64_t* counter;
    bip::interprocess_condition* cond;

    explicit LockSegment(const char* cmd)
        : remover(cmd),
          shm(bip::create_only, remover.name.c_str(), bip::read_write),
          region((shm.truncate(4096), shm), bip::read_write) {
        static_assert(OBJ + sizeof(bip::interprocess_mutex) + sizeof(uint64_t) <= CV,
                      "mutex + counter overlap the condition");
        static_assert(CV + sizeof(bip::interprocess_condition) <= 4096, "condition too big");
        base = static_cast<char*>(region.get_address());
        start = new (base + START) std::atomic<uint32_t>(0);
        mutex = new (base + OBJ) bip::interprocess_mutex;
        counter = new (base + OBJ + sizeof(bip::interprocess_mutex)) uint64_t(0);
        cond = new (base + CV) bip::interprocess_condition;
    }
    ~LockSegment() {
        cond->~interprocess_condition();
        mutex->~interprocess_mutex();
    }
};

// Where locks.rs `processes` puts its children.
enum class Placement { Spread, OneCpu, Free };

constexpr uint32_t GO = 1u << 30;

// locks.rs `processes`: `procs` forked children (pinned to different CPUs,
// all to one CPU, or not pinned), released together; the time from release
// until all are reaped.
template <class F>
Clock::duration processes(std::atomic<uint32_t>& start, int procs, Placement where, F work) {
    start.store(0);
    Children children;
    for (int i = 0; i < procs; i++) {
        spawn(children, [&, i] {
            if (where == Placement::Spread) pin_to_cpu(allowed_cpu(i));
            if (where == Placement::OneCpu) pin_to_cpu(allowed_cpu(0));
            start.fetch_add(1);
            while (start.load() < GO) sched_yield();
            return work(i);
        });
    }
    while (start.load() < uint32_t(procs)) sched_yield();
    auto t0 = Clock::now();
    start.store(GO);
    children.wait_all();
    return Clock::now() - t0;
}

Placement two_cpus(uint64_t cpus_arg) {
    return cpus_arg == 1 ? Placement::OneCpu : Placement::Spread;
}

void lock_uncontended(uint64_t pairs) {
    LockSegment s("lock_uncontended");
    auto t0 = Clock::now();
    for (uint64_t i = 0; i < pairs; i++) {
        s.mutex->lock();
        black_box(s.mutex);
        s.mutex->unlock();
    }
    std::printf("lock_uncontended %.3f ns/pair\n", ns_per(Clock::now() - t0, pairs));
}

void lock_write_unlock(uint64_t pairs) {
    LockSegment s("lock_write_unlock");
    auto t0 = Clock::now();
    for (uint64_t i = 0; i < pairs; i++) {
        s.mutex->lock();
        *s.counter = i;
        black_box(s.counter);
        s.mutex->unlock();
    }
    std::printf("lock_write_unlock %.3f ns/pair\n", ns_per(Clock::now() - t0, pairs));
}

void lock_contended(uint64_t total, uint64_t cpus_arg) {
    LockSegment s("lock_contended");
    auto t = processes(*s.start, 2, two_cpus(cpus_arg), [&](int) {
        for (;;) {
            bip::scoped_lock<bip::interprocess_mutex> g(*s.mutex);
            if (*s.counter >= total) return 0;
            *s.counter += 1;
        }
    });
    if (*s.counter != total) throw std::runtime_error("lock_contended: wrong count");
    std::printf("lock_contended %.3f Mops/s\n", double(total) / secs(t) / 1e6);
}

void pingpong(uint64_t trips, uint64_t cpus_arg) {
    LockSegment s("pingpong");
    auto t = processes(*s.start, 2, two_cpus(cpus_arg), [&](int me) {
        uint64_t my = uint64_t(me);
        for (uint64_t i = 0; i < trips; i++) {
            bip::scoped_lock<bip::interprocess_mutex> g(*s.mutex);
            // The counter is the turn; wait() reloads it (an opaque call).
            while (*s.counter != my) s.cond->wait(g);
            *s.counter = 1 - my;
            s.cond->notify_one();
        }
        return 0;
    });
    std::printf("pingpong %.3f ns/trip\n", ns_per(t, trips));
}

void contended_many(uint64_t total, uint64_t procs) {
    if (procs == 0 || procs > 1024 || total % procs != 0) {
        throw std::runtime_error("contended_many: PROCS must divide TOTAL");
    }
    LockSegment s("contended_many");
    uint64_t each = total / procs;
    auto t = processes(*s.start, int(procs), Placement::Free, [&](int) {
        for (uint64_t i = 0; i < each; i++) {
            bip::scoped_lock<bip::interprocess_mutex> g(*s.mutex);
            *s.counter += 1;
        }
        return 0;
    });
    if (*s.counter != total) throw std::runtime_error("contended_many: wrong count");
    std::printf("contended_many %.3f Mops/s\n", double(total) / secs(t) / 1e6);
}

void blocked_wakeups(uint64_t ms) {
    LockSegment s("blocked_wakeups");
    Children children;  // destroyed first: a failure kills both
    spawn(children, [&] {
        s.mutex->lock();  // held until the parent says 2
        s.start->store(1);
        while (s.start->load() != 2) usleep(1000);
        s.mutex->unlock();
        return 0;
    });
    while (s.start->load() != 1) usleep(100);
    spawn(children, [&] {
        s.mutex->lock();
        s.mutex->unlock();
        return 0;
    });
    pid_t waiter = children.pids[1];
    usleep(100000);  // let it settle into its wait
    uint64_t before = context_switches(waiter);
    usleep(useconds_t(ms * 1000));
    uint64_t after = context_switches(waiter);
    s.start->store(2);
    children.wait_all();
    std::printf("blocked_wakeups %.3f switches/s\n", double(after - before) / (double(ms) / 1e3));
}

// ---- heap: a 1 GiB managed_shared_memory, like heap.rs's 1 GiB segment ------

constexpr size_t HEAP_BYTES = size_t(1) << 30;

struct HeapSegment {
    Remover remover;
    bip::managed_shared_memory seg;
    explicit HeapSegment(const char* cmd)
        : remover(cmd), seg(bip::create_only, remover.name.c_str(), HEAP_BYTES) {}
};

void alloc_small(uint64_t pairs) {
    HeapSegment h("alloc_small");
    for (int i = 0; i < 100000; i++) {  // warm up, as heap.rs does
        void* p = h.seg.allocate(64);
        black_box(p);
        h.seg.deallocate(p);
    }
    auto t0 = Clock::now();
    for (uint64_t i = 0; i < pairs; i++) {
        void* p = h.seg.allocate(64);
        black_box(p);
        h.seg.deallocate(p);
    }
    std::printf("alloc_small %.3f ns/pair\n", ns_per(Clock::now() - t0, pairs));
}

void alloc_batch(uint64_t n) {
    // heap.rs's size sequence and shuffled free order, from the same seed.
    uint64_t rng = 0x123456789abcdef1ULL;
    std::vector<size_t> sizes(n);
    for (auto& s : sizes) s = 16 + size_t(xorshift(rng) % 1009);
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; i++) order[i] = i;
    for (size_t i = n - 1; i >= 1; i--) {
        std::swap(order[i], order[size_t(xorshift(rng) % (uint64_t(i) + 1))]);
    }
    uint64_t requested = 0;
    for (size_t s : sizes) requested += s;

    HeapSegment h("alloc_batch");
    size_t free_before = h.seg.get_free_memory();
    auto t0 = Clock::now();
    std::vector<void*> ptrs;
    ptrs.reserve(n);  // heap.rs's collect() allocates its Vec inside the timing too
    for (size_t s : sizes) ptrs.push_back(h.seg.allocate(s));
    double alloc_ns = ns_per(Clock::now() - t0, n);
    uint64_t used = free_before - h.seg.get_free_memory();
    t0 = Clock::now();
    for (size_t i : order) h.seg.deallocate(ptrs[i]);
    double free_ns = ns_per(Clock::now() - t0, n);
    if (h.seg.get_free_memory() != free_before) {
        throw std::runtime_error("alloc_batch: memory not all returned");
    }
    std::printf("alloc_batch_alloc %.3f ns/alloc\n", alloc_ns);
    std::printf("alloc_batch_free %.3f ns/free\n", free_ns);
    std::printf("alloc_batch_requested %" PRIu64 " bytes\n", requested);
    std::printf("alloc_batch_used %" PRIu64 " bytes\n", used);
}

void alloc_contended(uint64_t pairs) {
    HeapSegment h("alloc_contended");
    auto* go = h.seg.construct<std::atomic<uint32_t>>(bip::anonymous_instance)(0u);
    // heap.rs `forked(2, ...)`: unpinned children spin on `go`; the parent
    // sleeps 50 ms, releases them and times until both are reaped.
    go->store(0);
    Children children;
    for (int c = 0; c < 2; c++) {
        spawn(children, [&] {
            while (go->load(std::memory_order_acquire) == 0) __builtin_ia32_pause();
            for (uint64_t i = 0; i < pairs; i++) {
                void* p = h.seg.allocate(64);
                black_box(p);
                h.seg.deallocate(p);
            }
            return 0;
        });
    }
    usleep(50000);
    auto t0 = Clock::now();
    go->store(1, std::memory_order_release);
    children.wait_all();
    auto t = Clock::now() - t0;
    h.seg.destroy_ptr(go);
    std::printf("alloc_contended %.3f Mops/s\n", double(2 * pairs) / secs(t) / 1e6);
}

int usage() {
    std::fprintf(stderr,
                 "usage: boost_peer {lock_uncontended|lock_write_unlock|lock_contended|pingpong|"
                 "contended_many|blocked_wakeups|alloc_small|alloc_batch|alloc_contended} "
                 "N [CPUS|PROCS]\n");
    return 2;
}

}  // namespace

// A positive decimal number, or 0 if `text` is not one.
unsigned long long number(const char* text) {
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0') return 0;
    return n;
}

int main(int argc, char** argv) {
    if (argc != 3 && argc != 4) return usage();
    unsigned long long n = number(argv[2]);
    unsigned long long extra = argc == 4 ? number(argv[3]) : 2;
    if (n == 0 || extra == 0) return usage();
    std::string cmd = argv[1];
    try {
        if (cmd == "lock_uncontended") lock_uncontended(n);
        else if (cmd == "lock_write_unlock") lock_write_unlock(n);
        else if (cmd == "lock_contended") lock_contended(n, extra);
        else if (cmd == "pingpong") pingpong(n, extra);
        else if (cmd == "contended_many") contended_many(n, extra);
        else if (cmd == "blocked_wakeups") blocked_wakeups(n);
        else if (cmd == "alloc_small") alloc_small(n);
        else if (cmd == "alloc_batch") alloc_batch(n);
        else if (cmd == "alloc_contended") alloc_contended(n);
        else return usage();
    } catch (const std::exception& e) {
        // Every Remover and Children on the way out has run by now.
        std::fprintf(stderr, "boost_peer %s: %s\n", cmd.c_str(), e.what());
        return 1;
    }
    return 0;
}
