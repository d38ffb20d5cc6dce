;;; build-control.scm -- how builds are run: max-silent-time and timeout,
;;; check mode on a deterministic and a non-deterministic derivation (and
;;; on one that was never built).

(load (string-append (dirname (current-filename)) "/build-common.scm"))

(define s (connect))
(set-build-options s #:use-substitutes? #f #:verbosity 1)
(define bb (add-busybox! s))

;;; Time limits.

(define silent
  (sh-derivation s bb "silent" "echo start; sleep 30; echo never > $out"))
(set-build-options s #:use-substitutes? #f #:verbosity 1 #:max-silent-time 1)
(expect-build-error! "max-silent-time" s (list silent) "failed" 101)
(check-log! "max-silent-time: message"
            (string-append "building of `" (drv-file silent)
                           "' timed out after 1 seconds of silence"))
(check-log! "max-silent-time: trace"
            (string-append "@ build-failed " (drv-file silent) " - timeout"))
(record-outputs! "max-silent-time" s silent)

;; Output keeps the silence timer from firing, but not the overall one.
(define chatty
  (sh-derivation s bb "chatty"
                 "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick; sleep 0.3; done; echo > $out"))
(set-build-options s #:use-substitutes? #f #:verbosity 1 #:max-silent-time 2
                   #:timeout 1)
(let ((o (build! "timeout" s (list chatty) #:record-log? #f)))
  (record! "timeout: outcome" (outcome->json o (const #t)))
  (check! "timeout: status" (and (error? o) (= 101 (error-status o))) o)
  (check-log! "timeout: message"
              (string-append "building of `" (drv-file chatty)
                             "' timed out after "))
  (check-log! "timeout: trace"
              (string-append "@ build-failed " (drv-file chatty) " - timeout")))
(record-outputs! "timeout" s chatty)

;; Without limits, the same build succeeds.  (The limits stay with the
;; session until they are set again.)
(define (no-limits . more)
  (apply set-build-options s #:use-substitutes? #f #:verbosity 1
         #:max-silent-time 0 #:timeout 0 more))
(no-limits)
(expect-built! "no time limits" s (list chatty) #:record-log? #f)

;;; Check mode.

(define deterministic
  (sh-derivation s bb "deterministic" "mkdir $out; echo same > $out/v"))
(expect-build-error! "check before building" s (list deterministic)
                     "is missing outputs; build it normally before using `--check'" 1
                     #:mode (build-mode check))
(expect-built! "deterministic" s (list deterministic))
(expect-built! "check, deterministic" s (list deterministic)
               #:mode (build-mode check))
(check! "check, deterministic: the builder ran"
        (= 1 (count-traces %last-log "@ build-started")))
(record-outputs! "check, deterministic" s deterministic)

(define random-output
  (sh-derivation s bb "non-deterministic"
                 "cat /proc/sys/kernel/random/uuid > $out"))
(expect-built! "non-deterministic" s (list random-output))
(define first-contents (file-text (derivation->output-path random-output)))
(expect-build-error! "check, non-deterministic" s (list random-output)
                     (string-append "derivation `" (drv-file random-output)
                                    "' may not be deterministic: output `"
                                    (derivation->output-path random-output)
                                    "' differs")
                     1 #:mode (build-mode check))
(check! "check, non-deterministic: output unchanged"
        (equal? (file-text (derivation->output-path random-output))
                first-contents))

(step-alive! "alive at the end" s #t)
(finish!)
