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
//   alloc_batch N        N blocks of 16..1024 B, one byte written in each,
//                        then freed in a shuffled order
//   alloc_contended N C  2 forked processes x N allocate + deallocate pairs
//                        of 16..256 B, on C = 2 CPUs (one each) or C = 1
//                        (both on one)
//   heap_many TOTAL P    P forked processes (unpinned) share TOTAL pairs of
//                        16..256 B, each holding a ring of 16 blocks live
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

bool pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) == 0;
}

// heap.rs `allowed_cpus`: the CPUs this process may run on, in order.
std::vector<int> allowed_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) throw std::runtime_error("sched_getaffinity");
    std::vector<int> out;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (CPU_ISSET(c, &set)) out.push_back(c);
    }
    if (out.empty()) throw std::runtime_error("no CPU allowed");
    return out;
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
    std::vector<void*> ptrs;
    ptrs.reserve(n);  // before the timing, as heap.rs
    auto t0 = Clock::now();
    for (size_t s : sizes) {
        void* p = h.seg.allocate(s);
        static_cast<volatile char*>(p)[0] = 1;  // as its user will (heap.rs)
        ptrs.push_back(p);
    }
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

// heap.rs `seed` and `small_size`: each process's size sequence.
uint64_t seed(int who) { return 0x9e3779b97f4a7c15ULL * uint64_t(who + 1); }

size_t small_size(uint64_t& rng) { return 16 + size_t(xorshift(rng) % 241); }

// heap.rs `churn`: `pairs` times, free the block allocated `ring` pairs
// before (if any) and allocate one of a random size in 16..=256 B; `ring` 0
// frees each block right after allocating it. Frees the ring at the end.
void churn(bip::managed_shared_memory& seg, int who, uint64_t pairs, size_t ring) {
    uint64_t rng = seed(who);
    if (ring == 0) {
        for (uint64_t i = 0; i < pairs; i++) {
            void* p = seg.allocate(small_size(rng));
            black_box(p);
            seg.deallocate(p);
        }
        return;
    }
    std::vector<void*> slots(ring, nullptr);
    size_t slot = 0;
    for (uint64_t i = 0; i < pairs; i++) {
        if (slots[slot] != nullptr) seg.deallocate(slots[slot]);
        void* p = seg.allocate(small_size(rng));
        black_box(p);
        slots[slot] = p;
        if (++slot == ring) slot = 0;
    }
    for (void* p : slots) {
        if (p != nullptr) seg.deallocate(p);
    }
}

// heap.rs `Place`.
enum class Place { Spread, OneCpu, Free };

// heap.rs `Gate`: the start line, in the managed segment.
struct Gate {
    std::atomic<uint32_t> ready{0};
    std::atomic<uint32_t> go{0};
};

// heap.rs `forked`: `n` children, placed by `place`, released together once
// all are ready; the time from the release until all are reaped.
template <class F>
Clock::duration forked(Gate& gate, int n, Place place, F work) {
    gate.ready.store(0);
    gate.go.store(0);
    std::vector<int> cpu_list = allowed_cpus();
    Children children;
    for (int i = 0; i < n; i++) {
        spawn(children, [&, i] {
            int cpu = place == Place::Spread   ? cpu_list[size_t(i) % cpu_list.size()]
                      : place == Place::OneCpu ? cpu_list[0]
                                               : -1;
            if (cpu >= 0 && !pin_to_cpu(cpu)) return 3;
            gate.ready.fetch_add(1);
            while (gate.go.load(std::memory_order_acquire) == 0) sched_yield();
            work(i);
            return 0;
        });
    }
    auto deadline = Clock::now() + std::chrono::seconds(20);
    while (gate.ready.load() < uint32_t(n)) {
        if (Clock::now() > deadline) throw std::runtime_error("children never got ready");
        usleep(1000);
    }
    auto t0 = Clock::now();
    gate.go.store(1, std::memory_order_release);
    children.wait_all();
    return Clock::now() - t0;
}

// Mops/s of `procs` processes x `pairs` pairs of churn with `ring`.
double churn_run(const char* cmd, int procs, Place place, uint64_t pairs, size_t ring) {
    HeapSegment h(cmd);
    auto* gate = h.seg.construct<Gate>(bip::anonymous_instance)();
    auto t = forked(*gate, procs, place, [&](int i) { churn(h.seg, i, pairs, ring); });
    h.seg.destroy_ptr(gate);
    return double(uint64_t(procs) * pairs) / secs(t) / 1e6;
}

void alloc_contended(uint64_t pairs, uint64_t cpus) {
    if (cpus != 1 && cpus != 2) throw std::runtime_error("alloc_contended: CPUs must be 1 or 2");
    double m = churn_run("alloc_contended", 2, cpus == 2 ? Place::Spread : Place::OneCpu, pairs, 0);
    std::printf("alloc_contended %.3f Mops/s\n", m);
}

void heap_many(uint64_t total, uint64_t procs) {
    if (procs == 0 || procs > 1024) throw std::runtime_error("heap_many: 1..1024 processes");
    double m = churn_run("heap_many", int(procs), Place::Free, total / procs, 16);
    std::printf("heap_many %.3f Mops/s\n", m);
}

int usage() {
    std::fprintf(stderr,
                 "usage: boost_peer {lock_uncontended|lock_write_unlock|"
                 "alloc_small|alloc_batch} N | {lock_contended|pingpong} N [CPUS] | "
                 "blocked_wakeups MS | alloc_contended N CPUS | {contended_many|heap_many} TOTAL "
                 "PROCS\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3 && argc != 4) return usage();
    uint64_t args[2] = {0, 0};
    for (int i = 2; i < argc; i++) {
        char* end = nullptr;
        errno = 0;
        unsigned long long v = std::strtoull(argv[i], &end, 10);
        if (errno != 0 || end == argv[i] || *end != '\0' || v == 0) return usage();
        args[i - 2] = v;
    }
    uint64_t n = args[0];
    std::string cmd = argv[1];
    bool two = argc == 4;
    bool wants_two =
        cmd == "alloc_contended" || cmd == "heap_many" || cmd == "contended_many";
    bool may_take_two = wants_two || cmd == "lock_contended" || cmd == "pingpong";
    if (two ? !may_take_two : wants_two) return usage();
    uint64_t extra = two ? args[1] : 2;  // CPUS defaults to 2
    try {
        if (cmd == "lock_uncontended") lock_uncontended(n);
        else if (cmd == "lock_write_unlock") lock_write_unlock(n);
        else if (cmd == "lock_contended") lock_contended(n, extra);
        else if (cmd == "pingpong") pingpong(n, extra);
        else if (cmd == "contended_many") contended_many(n, extra);
        else if (cmd == "blocked_wakeups") blocked_wakeups(n);
        else if (cmd == "alloc_small") alloc_small(n);
        else if (cmd == "alloc_batch") alloc_batch(n);
        else if (cmd == "alloc_contended") alloc_contended(n, args[1]);
        else if (cmd == "heap_many") heap_many(n, args[1]);
        else return usage();
    } catch (const std::exception& e) {
        // Every Remover and Children on the way out has run by now.
        std::fprintf(stderr, "boost_peer %s: %s\n", cmd.c_str(), e.what());
        return 1;
    }
    return 0;
}
