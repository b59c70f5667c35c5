// A reentrant lock's guard gives `&T` only: the holding thread may hold
// several guards at once, so none of them may hand out `&mut T`.
use shmutils::RLock;

fn main() {
    let lock = RLock::new(0u64);
    let guard = lock.lock().unwrap();
    *guard += 1;
}
